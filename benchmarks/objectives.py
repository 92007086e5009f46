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
    rows = []
    for folder in args.results:
        path = folder / "results.json"
        if not path.is_file():
            sys.exit(f"objectives.py: error: {path} does not exist; run benchmarks/learning.py --out {folder} first")
        rows += json.loads(path.read_text())["rows"]
    env_ids = list(dict.fromkeys(r["env_id"] for r in rows))
    random = {env_id: random_return(env_id, args.random_episodes) for env_id in env_ids}
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
    cells = [
        f"{np.mean(scores[label]):.2f} ± {np.std(scores[label], ddof=1) / len(scores[label]) ** 0.5:.2f}"
        for label in labels(rows)
    ]
    lines.append("| normalized score (mean ± standard error over runs) | 0 | " + " | ".join(cells) + " |")
    paper = [f"{PAPER[label]:.2f}" if label in PAPER else "-" for label in labels(rows)]
    lines.append("| paper, Table 1 (7 tasks) | 0 | " + " | ".join(paper) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
