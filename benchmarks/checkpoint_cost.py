"""What a periodic checkpoint costs: the time save_checkpoint takes for each script's default network
and optimizer, and its share of the default --checkpoint-minutes.

    python benchmarks/checkpoint_cost.py
"""

import datetime
import importlib.util
import inspect
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
TASKS = [
    ("ppo_discrete.py", "CartPole-v1"),
    ("ppo_continuous.py", "HalfCheetah-v5"),
    ("ppo_atari.py", "BreakoutNoFrameskip-v4"),
]


def main() -> None:
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, `python {' '.join(sys.argv)}`")
    print("| script | env | checkpoint size | save time (median of 5) | share of --checkpoint-minutes |\n|-|-|-|-|-|")
    for script, env_id in TASKS:
        spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
        ppo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ppo)
        args = ppo.Args(env_id=env_id)
        known = {"env_id": env_id, "num_envs": 1, "capture_video": False, "run_name": "", "gamma": args.gamma}
        envs = ppo.make_envs(**{name: known[name] for name in inspect.signature(ppo.make_envs).parameters})
        space = envs.single_action_space
        agent = ppo.Agent(envs.single_observation_space.shape[0], space.n if hasattr(space, "n") else space.shape[0])
        optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
        for p in agent.parameters():  # one step, so that Adam's state is in the checkpoint
            p.grad = torch.zeros_like(p)
        optimizer.step()
        resumable = dict(model=agent, optimizer=optimizer)  # as main builds it
        if hasattr(envs, "obs_rms"):
            resumable.update(obs_rms=envs.obs_rms, return_rms=envs.return_rms)
        envs.close()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "run", "checkpoint.pt")
            os.makedirs(os.path.dirname(path))
            seconds = []
            for _ in range(5):
                start = time.perf_counter()
                ppo.save_checkpoint(path, resumable, args, 1, args.batch_size)
                seconds.append(time.perf_counter() - start)
            size = os.path.getsize(path) / 1e6
        save = float(np.median(seconds))
        share = save / (60 * args.checkpoint_minutes)
        print(f"| {script} | {env_id} | {size:.2f} MB | {save * 1e3:.1f} ms | {share:.4%} |")


if __name__ == "__main__":
    main()
