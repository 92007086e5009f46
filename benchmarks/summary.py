"""The README's results summary: one row per task this project has measured, our final return beside the
published figures for PPO on the same task, and one figure with the learning curves of those tasks side by side.

    python benchmarks/summary.py

Reads the runs that benchmarks/learning.py saved (benchmarks/results/<folder>/results.json: each run's final
return and its learning curve, read from its event file) and writes benchmarks/results/summary.md and
benchmarks/results/summary.png; benchmarks/update_readme.py copies both into the README. The published
figures are quoted by hand below, each with its source.
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import WINDOW, run_dates, smoothed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# (task, results folder, variant label, script, comparison variant label or None)
TASKS = [
    ("CartPole-v1", "cartpole", "clip", "ppo_discrete.py", None),
    ("Acrobot-v1", "acrobot", "clip", "ppo_discrete.py", None),
    ("popgym-PositionOnlyCartPoleEasy-v0", "popgym", "lstm", "ppo_lstm.py", "mlp"),
    ("popgym-RepeatPreviousEasy-v0", "popgym", "lstm", "ppo_lstm.py", "mlp"),
    ("HalfCheetah-v5", "objectives-halfcheetah", "clip", "ppo_continuous.py", None),
    ("Hopper-v5", "objectives-hopper", "clip", "ppo_continuous.py", None),
    ("Walker2d-v5", "objectives-walker2d", "clip", "ppo_continuous.py", None),
    ("InvertedPendulum-v5", "invertedpendulum", "clip", "ppo_continuous.py", None),
    ("BreakoutNoFrameskip-v4", "breakout", "clip", "ppo_atari.py", None),
]

CLEANRL = "https://github.com/vwxyzjn/cleanrl/blob/master/docs/rl-algorithms/ppo.md"  # "Experiment results"
ZOO = "https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/benchmark.md"  # "Performance of trained agents"
PAPER = "https://arxiv.org/abs/1707.06347"  # Appendix B, Table 6
# task -> [(source, its env id and budget, figure as published, budget in env steps, link)], read 2026-12-02.
# CleanRL: mean ± std over 3 seeds of each seed's last 100 training episodes (CleanRL's ppo.py,
# ppo_continuous_action.py, ppo_atari.py with their defaults). RL Zoo: one agent trained with tuned
# hyperparameters, evaluated deterministically (Atari: stochastically). The PPO paper: last 100 episodes,
# 3 trials; for MuJoCo (v1) it gives curves only.
PUBLISHED: dict[str, list[tuple[str, str, str, int, str]]] = {
    "CartPole-v1": [
        ("CleanRL", "CartPole-v1, 500k", "490.04 ± 6.12", 500000, CLEANRL),
        ("RL Zoo", "CartPole-v1, 100k", "500.00 ± 0.00", 100000, ZOO),
    ],
    "Acrobot-v1": [
        ("CleanRL", "Acrobot-v1, 500k", "-86.36 ± 1.32", 500000, CLEANRL),
        ("RL Zoo", "Acrobot-v1, 1M", "-73.51 ± 18.20", 1000000, ZOO),
    ],
    "HalfCheetah-v5": [
        ("CleanRL", "HalfCheetah-v4, 1M", "1442.64 ± 46.03", 1000000, CLEANRL),
        ("RL Zoo", "HalfCheetah-v3, 1M", "5819.10 ± 663.53", 1000000, ZOO),
    ],
    "Hopper-v5": [
        ("CleanRL", "Hopper-v4, 1M", "2382.86 ± 271.74", 1000000, CLEANRL),
        ("RL Zoo", "Hopper-v3, 1M", "2410.44 ± 10.03", 1000000, ZOO),
    ],
    "Walker2d-v5": [
        ("CleanRL", "Walker2d-v4, 1M", "2287.95 ± 571.78", 1000000, CLEANRL),
        ("RL Zoo", "Walker2d-v3, 1M", "3478.80 ± 821.71", 1000000, ZOO),
    ],
    "InvertedPendulum-v5": [("CleanRL", "InvertedPendulum-v4, 1M", "963.09 ± 22.20", 1000000, CLEANRL)],
    "BreakoutNoFrameskip-v4": [
        ("CleanRL", "BreakoutNoFrameskip-v4, 10M", "414.66 ± 28.09", 10000000, CLEANRL),
        ("PPO paper", "Breakout, 10M (40M frames)", "274.8", 10000000, PAPER),
        ("RL Zoo", "BreakoutNoFrameskip-v4, 10M", "398.03 ± 33.33", 10000000, ZOO),
    ],
}
NOTES = [
    "Published figures read 2026-12-02 from [CleanRL's PPO page]("
    + CLEANRL
    + ") (its current tables; mean ± std over 3 "
    "seeds of each seed's last 100 training episodes, CleanRL's scripts with their defaults; its MuJoCo tasks are "
    "v4, ours v5), [RL Baselines3 Zoo's benchmark](" + ZOO + ") (one agent with tuned hyperparameters, evaluated "
    "deterministically but on Atari; MuJoCo v3) and the [PPO paper](" + PAPER + ") (Table 6: last 100 episodes of 3 "
    "trials; its MuJoCo results, on v1, are curves only). Ours is the mean over the episodes of the last 10% of "
    "steps, a window of about the same size. A comparison at another budget says so instead of a verdict. POPGym's "
    "paper reports normalized scores (MMER) after 15M steps, which we have not read: no published figure for its rows. "
    "The InvertedPendulum (2026-11-21) and Breakout (2026-11-22, one seed at a fifth of the published budget, on this "
    "CPU) rows ran on earlier versions of the scripts with the same algorithm.",
]


def runs(folder: str, env_id: str, label: str) -> list[dict]:
    rows = json.loads((RESULTS / folder / "results.json").read_text())["rows"]
    return [r for r in rows if r["env_id"] == env_id and r["label"] == label]


def ours(group: list[dict]) -> tuple[float, str]:
    """(mean final return, its cell: mean ± std over seeds, seeds, steps, dates)."""
    finals = [r["final_return"] for r in group]
    when = run_dates(group)
    steps = group[0]["total_timesteps"]
    digits = 2 if abs(np.mean(finals)) < 10 else 1  # POPGym's returns lie in [-1, 1]
    seeds = f"{len(group)} seed{'s' if len(group) > 1 else ''}"
    cell = f"{np.mean(finals):.{digits}f} ± {np.std(finals):.{digits}f} ({seeds}, {steps / 1e6:g}M steps, {when})"
    return float(np.mean(finals)), cell


def table() -> str:
    lines = [
        "| task | script | ours: final return (mean ± std) | published | ours against it |",
        "|-|-|-|-|-|",
    ]
    for env_id, folder, label, script, baseline in TASKS:
        group = runs(folder, env_id, label)
        mean, cell = ours(group)
        if baseline:
            other, other_cell = ours(runs(folder, env_id, baseline))
            cell += f"; ppo_discrete.py, no memory: {other:.2f}"
        published, verdicts = [], []
        for source, where, figure, budget, link in PUBLISHED.get(env_id, []):
            published.append(f"[{source}]({link}) ({where}): {figure}")
            if budget != group[0]["total_timesteps"]:
                verdicts.append(f"{source}: other budget")
            else:
                verdicts.append(f"{source}: {'below' if mean < float(figure.split()[0]) else 'at or above'}")
        lines.append(
            f"| {env_id} | {script} | {cell} | {'<br>'.join(published) or 'none found'} | "
            f"{'; '.join(verdicts) or '-'} |"
        )
    return "\n".join([*lines, "", *NOTES]) + "\n"


def figure(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    for ax, (env_id, folder, label, script, baseline) in zip(axes.flat, TASKS, strict=True):
        for variant, name in [(label, script), *([(baseline, "ppo_discrete.py")] if baseline else [])]:
            group = runs(folder, env_id, variant)
            grid = np.linspace(0, group[0]["total_timesteps"], 101)
            curves = [smoothed(r, grid) for r in group]
            mean, low, high = np.mean(curves, 0), np.min(curves, 0), np.max(curves, 0)
            ax.plot(grid, mean, label=f"{name} ({len(curves)} seeds)")
            ax.fill_between(grid, low, high, alpha=0.2)
        ax.set(title=env_id.removeprefix("popgym-"), xlabel="environment steps")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"training episodic return ({WINDOW}-episode moving mean): mean over seeds, band from min to max")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    (RESULTS / "summary.md").write_text(table())
    figure(RESULTS / "summary.png")
    print((RESULTS / "summary.md").read_text())


if __name__ == "__main__":
    main()
