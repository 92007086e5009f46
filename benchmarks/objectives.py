"""The PPO paper's comparison of surrogate objectives (section 6.1, Table 1) from benchmarks/learning.py results:
one results.json per task, each with the same variants and seeds.

    python benchmarks/objectives.py benchmarks/results/objectives-halfcheetah benchmarks/results/objectives-hopper \
        --out benchmarks/results/objectives.md

The normalized score is the paper's: per task, the random policy scores 0 and the best variant 1, where a
variant's result is its final return (learning.py: mean over the episodes of the last 10% of steps) averaged
over seeds; each run is normalized, and a variant's score is the mean over all its runs on all tasks, with its
standard error (the runs' standard deviation / sqrt(number of runs)).
The random policy's return is measured here: uniform random actions, --random-episodes episodes, seeded.
"""

import argparse
import datetime
import json
import os
import shlex
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

PAPER = {"clip": 0.82, "adaptive KL": 0.74, "fixed β=1": 0.71}  # Table 1: ε=0.2, d_targ=0.01, β=1


def random_return(env_id: str, episodes: int, seed: int = 1) -> float:
    """Mean return of uniform random actions over the given number of episodes."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def normalized_scores(rows: list[dict], random: dict[str, float]) -> dict[str, list[float]]:
    """label -> each of its runs' (final return - random) / (best variant's seed-mean on the run's task - random)."""
    per_run = {}
    for env_id, floor in random.items():
        task = [r for r in rows if r["env_id"] == env_id]
        means = {label: np.mean([r["final_return"] for r in task if r["label"] == label]) for label in labels(task)}
        best = max(means.values())
        for r in task:
            per_run.setdefault(r["label"], []).append((r["final_return"] - floor) / (best - floor))
    return per_run


def check_rows(rows: list[dict], random: dict[str, float]) -> None:
    """Raises ValueError unless every task holds every variant with the same seeds and its best beats random."""
    for env_id, floor in random.items():
        task = [r for r in rows if r["env_id"] == env_id]
        runs = [(r["label"], r["seed"]) for r in task]
        if len(set(runs)) < len(runs):
            raise ValueError(f"{env_id} holds a run twice; give each results folder once")
        seeds = {label: sorted(seed for run_label, seed in runs if run_label == label) for label in labels(rows)}
        if len({tuple(s) for s in seeds.values()}) > 1:
            raise ValueError(f"{env_id}: the variants' seeds differ ({seeds}); finish the runs")
        best = max(np.mean([r["final_return"] for r in task if r["label"] == label]) for label in seeds)
        if best <= floor:
            raise ValueError(f"{env_id}: no variant's mean beats the random policy's {floor:.1f}: no score")


def score_cell(scores: list[float]) -> str:
    """The mean, and its standard error where there are two runs or more."""
    if len(scores) < 2:
        return f"{np.mean(scores):.2f}"
    return f"{np.mean(scores):.2f} ± {np.std(scores, ddof=1) / len(scores) ** 0.5:.2f}"


def labels(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["label"] for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="folders written by benchmarks/learning.py --out")
    parser.add_argument("--random-episodes", type=int, default=100)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.random_episodes < 1:
        sys.exit(f"objectives.py: error: --random-episodes must be at least 1, got {args.random_episodes}")
    if not args.out.parent.is_dir():
        sys.exit(f"objectives.py: error: --out {args.out}: the folder {args.out.parent} does not exist")
    rows = []
    for folder in args.results:
        path = folder / "results.json"
        if not path.is_file():
            sys.exit(f"objectives.py: error: {path} does not exist; run benchmarks/learning.py --out {folder} first")
        try:
            rows += json.loads(path.read_text())["rows"]
        except (ValueError, KeyError):
            sys.exit(f"objectives.py: error: {path} is not a results.json of benchmarks/learning.py")
    env_ids = list(dict.fromkeys(r["env_id"] for r in rows))
    try:
        random = {env_id: random_return(env_id, args.random_episodes) for env_id in env_ids}
        check_rows(rows, random)
    except (ValueError, gym.error.Error) as e:
        sys.exit(f"objectives.py: error: {e}")
    scores = normalized_scores(rows, random)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *sys.argv[1:]])
    lines = [f"Command: `{command}`  ", f"Date: {datetime.date.today().isoformat()}", ""]
    lines += ["| task | random policy | " + " | ".join(labels(rows)) + " |", "|-|-|" + "-|" * len(labels(rows))]
    for env_id in env_ids:
        cells = []
        for label in labels(rows):
            finals = [r["final_return"] for r in rows if r["env_id"] == env_id and r["label"] == label]
            cells.append(f"{np.mean(finals):.1f} ± {np.std(finals):.1f} ({len(finals)} seeds)" if finals else "-")
        lines.append(f"| {env_id} | {random[env_id]:.1f} | " + " | ".join(cells) + " |")
    cells = [score_cell(scores[label]) for label in labels(rows)]
    lines.append("| normalized score (mean ± standard error over runs) | 0 | " + " | ".join(cells) + " |")
    paper = [f"{PAPER[label]:.2f}" if label in PAPER else "-" for label in labels(rows)]
    lines.append("| paper, Table 1 (7 tasks) | 0 | " + " | ".join(paper) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
