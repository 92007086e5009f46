"""Steps per second of a script against the random-policy throughput of the same vector env.

    python benchmarks/sps.py --script ppo_discrete.py --env-id CartPole-v1 --total-timesteps 100000 --repeats 5
    python benchmarks/sps.py --script ppo_lstm.py --against ppo_discrete.py --env-id CartPole-v1 --repeats 6

Each repeat measures, one after the other: (1) the script's own `make_envs(...)` vector env,
built with the script's default arguments, stepped with `envs.action_space.sample()` for the same
number of steps; (2) the script trained for --total-timesteps with its defaults, whose SPS is the
last charts/SPS it logs (steps over wall time of the training loop). Reported: the median of each
over the repeats and the median of the per-repeat ratio, so both sides share the machine's state.
With --against, each repeat trains the two scripts in turn instead (their own defaults, the same env and
budget), and the result is the two medians and the median ratio (benchmarks/results/sps-lstm.md).
After the repeats, one more training run inside this process splits its wall time into env stepping,
the policy's inference in the rollout, and the rest (update, GAE, logging); see time_split.
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

HEADER = (
    "| script | env | PPO SPS (median) | random-policy SPS, same vector env (median) | ratio (median) "
    "| time split: env step / inference / update and the rest (one extra run) | repeats | date | machine | command |\n"
    "|-|-|-|-|-|-|-|-|-|-|\n"
)


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


def time_split(module, env_id: str, total_timesteps: int, extra_args: list[str]) -> dict[str, float]:
    """Where one training run's time goes, as fractions of the wall time from its first env step to its
    end: stepping the vector env, the policy's forward passes in the rollout (the agent's methods called
    under torch.inference_mode), and the rest (the update, GAE, storage and logging). The MLP scripts
    compute the rollout's V(s_t) in one batch after it, which counts as inference too. The script runs in this process, with its make_envs and Agent wrapped by timers."""
    import signal

    import torch
    import tyro

    spent = {"env": 0.0, "inference": 0.0, "first_step": None}
    make_envs, agent_class = module.make_envs, module.Agent

    def timed_make_envs(*a, **kw):
        envs = make_envs(*a, **kw)
        step = envs.step

        def timed_step(actions):
            start = time.perf_counter()
            spent["first_step"] = spent["first_step"] or start
            result = step(actions)
            spent["env"] += time.perf_counter() - start
            return result

        envs.step = timed_step
        return envs

    depth = [0]  # the agent's methods call each other: time only the outermost call

    def timed(method):
        def wrapper(self, *a, **kw):
            if depth[0] or not torch.is_inference_mode_enabled():
                return method(self, *a, **kw)
            depth[0] += 1
            start = time.perf_counter()
            try:
                return method(self, *a, **kw)
            finally:
                spent["inference"] += time.perf_counter() - start
                depth[0] -= 1

        return wrapper

    names = ("get_action", "get_action_and_value", "get_value", "get_states")  # get_states: ppo_lstm.py's LSTM
    methods = {name: timed(getattr(agent_class, name)) for name in names if hasattr(agent_class, name)}
    timed_agent_class = type(agent_class.__name__, (agent_class,), methods)
    args = tyro.cli(module.Args, args=["--env-id", env_id, "--total-timesteps", str(total_timesteps), *extra_args])
    args.eval_episodes = 0
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    cwd = os.getcwd()
    module.make_envs, module.Agent = timed_make_envs, timed_agent_class
    with tempfile.TemporaryDirectory() as workdir:
        try:
            os.chdir(workdir)
            module.main(args)
            total = time.perf_counter() - spent["first_step"]
        finally:
            os.chdir(cwd)
            module.make_envs, module.Agent = make_envs, agent_class
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    return {
        "env step": spent["env"] / total,
        "inference": spent["inference"] / total,
        "update and the rest": 1 - (spent["env"] + spent["inference"]) / total,
    }


def this_command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])


def append_row(out: Path | None, header: str, line: str) -> None:
    """Prints the table row and appends it to out (starting the file with header), if given."""
    print(line)
    if out:
        if not out.exists():
            out.write_text(header)
        with open(out, "a") as f:
            f.write(line + "\n")


AGAINST_HEADER = (
    "| script | against | env | SPS (median) | against: SPS (median) | ratio (median of the per-repeat ratios) "
    "| repeats | date | machine | command |\n|-|-|-|-|-|-|-|-|-|-|\n"
)


def side_by_side(args, extra_args: list[str]) -> None:
    """--against: the two scripts trained in turn in each repeat (the first one first in odd repeats, second in
    even ones, so that a drift of the machine's speed weighs on both alike); their SPS and its ratio."""
    first, second, ratios = [], [], []
    for repeat in range(args.repeats):
        order = [args.script, args.against] if repeat % 2 == 0 else [args.against, args.script]
        sps = {script: ppo_sps(script, args.env_id, args.total_timesteps, extra_args) for script in order}
        first.append(sps[args.script])
        second.append(sps[args.against])
        ratios.append(first[-1] / second[-1])
        print(f"repeat {repeat + 1}: {args.script} {first[-1]:7.0f} SPS   {args.against} {second[-1]:7.0f} SPS")
    command = this_command()
    line = (
        f"| {args.script} | {args.against} | {args.env_id} | {np.median(first):.0f} | {np.median(second):.0f} | "
        f"{np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | {args.repeats} | "
        f"{datetime.date.today().isoformat()} | {platform.machine()}, {os.cpu_count()} CPUs | `{command}` |"
    )
    append_row(args.out, AGAINST_HEADER, line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", required=True)
    parser.add_argument("--env-id", required=True)
    parser.add_argument("--total-timesteps", type=int, default=100000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to append the result to")
    parser.add_argument("--against", default=None, help="a second script, trained in turn: the two SPS and ratio")
    args, extra_args = parser.parse_known_args()
    header = AGAINST_HEADER if args.against else HEADER
    if args.out and args.out.exists() and args.out.read_text().splitlines()[:1] != header.splitlines()[:1]:
        raise SystemExit(f"{args.out} has another table header than this script writes; move it away first")
    if args.against:
        return side_by_side(args, extra_args)
    module = load_script(args.script)
    ppo, rand = [], []
    for repeat in range(args.repeats):
        rand.append(random_sps(module, args.env_id, args.total_timesteps, extra_args))
        ppo.append(ppo_sps(args.script, args.env_id, args.total_timesteps, extra_args))
        print(f"repeat {repeat + 1}: random {rand[-1]:9.0f} SPS   ppo {ppo[-1]:7.0f} SPS", flush=True)
    ratios = np.array(ppo) / np.array(rand)
    split = time_split(module, args.env_id, args.total_timesteps, extra_args)
    print("where the time goes: " + ", ".join(f"{name} {100 * share:.0f}%" for name, share in split.items()))
    command = this_command()
    line = (
        f"| {args.script} | {args.env_id} | {np.median(ppo):.0f} | {np.median(rand):.0f} | "
        f"{100 * np.median(ratios):.1f}% | {' / '.join(f'{100 * share:.0f}%' for share in split.values())} | "
        f"{args.repeats} | {datetime.date.today().isoformat()} | "
        f"{platform.machine()}, {os.cpu_count()} CPUs | `{command}` |"
    )
    append_row(args.out, HEADER, line)


if __name__ == "__main__":
    main()
