"""Runs one rank of a script under torchrun, as `torchrun ... tests/torchrun_worker.py SCRIPT OUT ARGS...`,
and writes what the rank ended with to OUT/rank{RANK}.pt: its weights, how many episodes its envs ended, and
(penalty scripts) the d of each β update.

Two environment variables change the run: WORKER_FREEZE=NAME freezes the agent's submodule NAME (e.g.
critic.0) as a researcher would, with requires_grad_(False), and keeps the agent's weights at its creation;
WORKER_KEEP_GRADS=1 keeps each update's gradient twice, as backward() left it (this rank's own) and as
clip_grad_norm_ receives it (after the ranks' all-reduce). The continuous scripts: each merge of the
normalization statistics is kept as (this rank's own statistic before it, the merged one)."""

import os
import sys

import torch
import tyro
from conftest import load_script

script, out, *args = sys.argv[1:]
ppo = load_script(script)
agents, made_envs = [], []
make_envs = ppo.make_envs


freeze = os.environ.get("WORKER_FREEZE")
initial = {}  # WORKER_FREEZE: the weights this rank's agent was created with


class KeptAgent(ppo.Agent):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if freeze:
            self.get_submodule(freeze).requires_grad_(False)
            initial.update({name: value.clone() for name, value in self.state_dict().items()})
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
own_grads, reduced_grads, layouts = [], [], []  # WORKER_KEEP_GRADS: per update, {parameter name: gradient}


def grads() -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in agents[0].named_parameters() if p.grad is not None}


if os.environ.get("WORKER_KEEP_GRADS"):
    backward, clip_grad_norm_ = torch.Tensor.backward, torch.nn.utils.clip_grad_norm_

    def kept_backward(self, *a, **kw):  # the loss's backward(): after it, p.grad is this rank's own gradient
        backward(self, *a, **kw)
        own_grads.append(grads())

    def kept_clip_grad_norm_(*a, **kw):  # called on the gradient the ranks agreed on, before clipping it
        reduced_grads.append(grads())
        # fused Adam walks a parameter and its gradient in memory order: their layouts (channels_last) must agree
        layouts.append(all(p.grad.stride() == p.stride() for p in agents[0].parameters() if p.grad is not None))
        return clip_grad_norm_(*a, **kw)

    torch.Tensor.backward, torch.nn.utils.clip_grad_norm_ = kept_backward, kept_clip_grad_norm_
merges = []  # the continuous scripts: per merge, ((mean, var, count) of this rank before it, merged)
if hasattr(ppo, "merge_moments"):
    merge_moments = ppo.merge_moments

    def kept_merge_moments(sums):
        merged = merge_moments(sums)
        rms = [made_envs[0].obs_rms, made_envs[0].return_rms][len(merges) % 2]  # main merges obs, then return
        as_tensors = lambda stat: (torch.as_tensor(stat[0]), torch.as_tensor(stat[1]), float(stat[2]))  # noqa: E731
        merges.append((as_tensors((rms.mean, rms.var, rms.count)), as_tensors(merged)))  # weights-only loadable
        return merged

    ppo.merge_moments = kept_merge_moments


def gloo_threads() -> list[str] | None:  # the threads of a gloo process group still running (None: not Linux)
    if not os.path.isdir("/proc/self/task"):
        return None
    tasks = os.listdir("/proc/self/task")
    return [name for name in (open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks) if "gloo" in name]


sys.argv = [script, *args]  # the script reads which arguments were given
try:
    ppo.main(tyro.cli(ppo.Args, args=args))
finally:
    if agents:  # the rank got past the argument checks
        episodes = len(made_envs[0].return_queue)  # RecordEpisodeStatistics keeps the last 100 returns
        kept = {"model": agents[0].state_dict(), "episodes": episodes, "kl": kl_seen, "initial": initial}
        kept.update(own_grads=own_grads, reduced_grads=reduced_grads, layouts=layouts, merges=merges)
        kept["gloo_threads"] = gloo_threads()  # after main returned: its destroy_process_group joined them
        torch.save(kept, os.path.join(out, f"rank{os.environ['RANK']}.pt"))
