"""Runs one rank of a script under torchrun, as `torchrun ... tests/torchrun_worker.py SCRIPT OUT ARGS...`,
and writes what the rank ended with to OUT/rank{RANK}.pt: its weights, how many episodes its envs ended, and
(penalty scripts) the d of each β update."""

import os
import sys

import torch
import tyro
from conftest import load_script

script, out, *args = sys.argv[1:]
ppo = load_script(script)
agents, made_envs = [], []
make_envs = ppo.make_envs


class KeptAgent(ppo.Agent):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        agents.append(self)


def kept_envs(*a, **kw):
    made_envs.append(make_envs(*a, **kw))
    return made_envs[-1]


ppo.Agent, ppo.make_envs = KeptAgent, kept_envs
kl_seen = []  # the penalty scripts: the d each rank adapts β with
if hasattr(ppo, "update_kl_coef"):
    update_kl_coef = ppo.update_kl_coef

    def kept_update_kl_coef(kl_coef, kl, kl_target):
        kl_seen.append(kl)
        return update_kl_coef(kl_coef, kl, kl_target)

    ppo.update_kl_coef = kept_update_kl_coef
sys.argv = [script, *args]  # the script reads which arguments were given
try:
    ppo.main(tyro.cli(ppo.Args, args=args))
finally:
    if agents:  # the rank got past the argument checks
        episodes = len(made_envs[0].return_queue)  # RecordEpisodeStatistics keeps the last 100 returns
        kept = {"model": agents[0].state_dict(), "episodes": episodes, "kl": kl_seen}
        torch.save(kept, os.path.join(out, f"rank{os.environ['RANK']}.pt"))
