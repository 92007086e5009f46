"""Steps per second of a script on 1 and on 2 processes (torchrun, gloo on CPU), with the same total
arguments, alternating in one sitting; and the time one minibatch's gradient all-reduce takes.

    python benchmarks/scaling.py --script ppo_atari.py --env-id BreakoutNoFrameskip-v4 --total-timesteps 10240

Each repeat runs the script once alone and once under `torchrun --standalone --nproc-per-node 2`
(which splits --num-envs and each minibatch between the two processes) and reads the last charts/SPS
each run logs (all processes' steps over the wall time of the training loop). The all-reduce is timed
on the script's own Agent, built for the env, in two gloo processes: the mean over --allreduce-calls
of the all-reduce of the whole flattened gradient the script does after each backward pass. One row per call is
appended to --out.
"""

import argparse
import datetime
import inspect
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import ROOT, read_scalars  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
HEADER = (
    "| script | env | arguments | SPS, 1 process (median) | SPS, 2 processes (median) | ratio (median) "
    "| all-reduce of the gradient, 2 gloo processes | parameters | repeats | date | machine | command |\n"
    "|-|-|-|-|-|-|-|-|-|-|-|-|\n"
)


def trained_sps(launcher: list[str], script: str, args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as cwd:
        cmd = [*launcher, str(ROOT / script), *args, "--eval-episodes", "0"]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{shlex.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        (run_dir,) = Path(cwd, "runs").iterdir()
        return read_scalars(str(run_dir))["charts/SPS"][-1][2]


def time_allreduce(script: str, env_id: str, calls: int) -> None:
    """Runs in each of the two processes torchrun starts: prints rank 0's mean seconds per all-reduce."""
    import importlib.util

    import torch
    import torch.distributed as dist

    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    ppo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ppo)
    dist.init_process_group("gloo")
    known = {"env_id": env_id, "num_envs": 1, "capture_video": False, "run_name": "", "gamma": 0.99}
    envs = ppo.make_envs(**{name: known[name] for name in inspect.signature(ppo.make_envs).parameters})
    space = envs.single_action_space
    agent = ppo.Agent(envs.single_observation_space.shape[0], space.n if hasattr(space, "n") else space.shape[0])
    envs.close()
    flat = torch.cat([torch.randn_like(p).flatten() for p in agent.parameters()])  # as the script sends it
    for _ in range(10):  # warm-up
        dist.all_reduce(flat, op=dist.ReduceOp.AVG)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        dist.all_reduce(flat, op=dist.ReduceOp.AVG)
    seconds = (time.perf_counter() - start) / calls
    if dist.get_rank() == 0:
        print(f"ALLREDUCE {seconds} {flat.numel()}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", required=True)
    parser.add_argument("--env-id", required=True)
    parser.add_argument("--total-timesteps", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--allreduce-calls", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.md"))
    parser.add_argument("--time-allreduce", action="store_true", help=argparse.SUPPRESS)  # the two processes
    args, extra = parser.parse_known_args()
    if args.time_allreduce:
        return time_allreduce(args.script, args.env_id, args.allreduce_calls)
    run_args = ["--env-id", args.env_id, "--total-timesteps", str(args.total_timesteps), *extra]
    one, two = [], []
    for repeat in range(args.repeats):
        one.append(trained_sps([sys.executable], args.script, run_args))
        two.append(trained_sps(TORCHRUN, args.script, run_args))
        print(f"repeat {repeat + 1}: 1 process {one[-1]:.0f} SPS, 2 processes {two[-1]:.0f} SPS", flush=True)
    cmd = [
        *TORCHRUN,
        __file__,
        "--time-allreduce",
        "--script",
        args.script,
        "--env-id",
        args.env_id,
        "--total-timesteps",
        "0",
    ]
    proc = subprocess.run([*cmd, "--allreduce-calls", str(args.allreduce_calls)], capture_output=True, text=True)
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("ALLREDUCE")] or [None]
    if line is None:
        sys.exit(f"timing the all-reduce failed:\n{proc.stderr[-2000:]}")
    seconds, numel = float(line.split()[1]), int(line.split()[2])
    ratio = np.median(np.array(two) / np.array(one))
    command = "python benchmarks/scaling.py " + shlex.join(sys.argv[1:])
    row = (
        f"| {args.script} | {args.env_id} | `{shlex.join(extra) or 'defaults'}` | {np.median(one):.0f} | "
        f"{np.median(two):.0f} | {ratio:.2f} | {seconds * 1e3:.2f} ms | {numel} | {args.repeats} | "
        f"{datetime.date.today()} | {platform.machine()}, {os.cpu_count()} CPUs | `{command}` |\n"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(HEADER)
    with out.open("a") as f:
        f.write(row)
    print(HEADER + row, end="")


if __name__ == "__main__":
    main()
