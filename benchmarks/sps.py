"""Steps per second of a script against the random-policy throughput of the same vector env.

    python benchmarks/sps.py --script ppo_discrete.py --env-id CartPole-v1 --total-timesteps 100000 --repeats 5

Each repeat measures, one after the other: (1) the script's own `make_envs(...)` vector env,
built with the script's default arguments, stepped with `envs.action_space.sample()` for the same
number of steps; (2) the script trained for --total-timesteps with its defaults, whose SPS is the
last charts/SPS it logs (steps over wall time of the training loop). Reported: the median of each
over the repeats and the median of the per-repeat ratio, so both sides share the machine's state.
"""

import argparse
import datetime
import importlib.util
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


def load_script(script: str):
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_sps(module, env_id: str, total_timesteps: int, extra_args: list[str]) -> float:
    """Steps per second of the script's vector env under uniformly random actions."""
    import tyro

    args = tyro.cli(module.Args, args=["--env-id", env_id, *extra_args])
    wanted = inspect.signature(module.make_envs).parameters
    kwargs = {name: getattr(args, name) for name in wanted if hasattr(args, name)}
    kwargs.update({name: "sps-benchmark" for name in wanted if name == "run_name"})
    envs = module.make_envs(**kwargs)
    envs.action_space.seed(args.seed)
    envs.reset(seed=args.seed)
    num_steps = total_timesteps // envs.num_envs
    start = time.perf_counter()
    for _ in range(num_steps):
        envs.step(envs.action_space.sample())
    elapsed = time.perf_counter() - start
    envs.close()
    return num_steps * envs.num_envs / elapsed


def ppo_sps(script: str, env_id: str, total_timesteps: int, extra_args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, str(ROOT / script), "--env-id", env_id, "--total-timesteps", str(total_timesteps)]
        subprocess.run([*cmd, "--eval-episodes", "0", *extra_args], cwd=workdir, check=True, capture_output=True)
        (run_dir,) = Path(workdir, "runs").iterdir()
        return read_scalars(str(run_dir))["charts/SPS"][-1][2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", required=True)
    parser.add_argument("--env-id", required=True)
    parser.add_argument("--total-timesteps", type=int, default=100000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to append the result to")
    args, extra_args = parser.parse_known_args()
    module = load_script(args.script)
    ppo, rand = [], []
    for repeat in range(args.repeats):
        rand.append(random_sps(module, args.env_id, args.total_timesteps, extra_args))
        ppo.append(ppo_sps(args.script, args.env_id, args.total_timesteps, extra_args))
        print(f"repeat {repeat + 1}: random {rand[-1]:9.0f} SPS   ppo {ppo[-1]:7.0f} SPS", flush=True)
    ratios = np.array(ppo) / np.array(rand)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    line = (
        f"| {args.script} | {args.env_id} | {np.median(ppo):.0f} | {np.median(rand):.0f} | "
        f"{100 * np.median(ratios):.1f}% | {args.repeats} | {datetime.date.today().isoformat()} | "
        f"{platform.machine()}, {os.cpu_count()} CPUs | `{command}` |"
    )
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
