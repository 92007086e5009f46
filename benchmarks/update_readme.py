"""Writes the README's results section from the files the benchmarks wrote.

    python benchmarks/update_readme.py

Replaces what lies between the markers `<!-- results:start -->` and `<!-- results:end -->` in
README.md with: the SPS table (benchmarks/results/sps.md), the comparison of objectives
(benchmarks/results/objectives.md, from benchmarks/objectives.py) and, for each folder of
benchmarks/results/ holding a results.md, that table and the learning-curve PNGs beside it.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def section() -> str:
    parts = []
    sps = RESULTS / "sps.md"
    if sps.exists():
        parts += [
            "### Speed",
            "",
            "Steps per second of each script with its defaults, beside the random-policy throughput of",
            "the same vector env measured in the same run (`benchmarks/sps.py`; medians over the repeats).",
            "The time split comes from one more run inside the benchmark's process: the share of wall time",
            "in the vector env's `step`, in the policy's forward passes during the rollout, and in the rest",
            "(the update, GAE, storage, logging). The rollout's values V(s_t) count as inference: the MLP",
            "scripts compute them in one batch after the rollout, ppo_atari.py with each action:",
            "",
            sps.read_text().strip(),
            "",
        ]
    objectives = RESULTS / "objectives.md"
    if objectives.exists():
        parts += [
            "### Clipping against the KL penalty (PPO paper, Table 1)",
            "",
            "Final return per task (mean ± std over seeds) of ppo_continuous.py (clip, ε = 0.2) and",
            "ppo_penalty_continuous.py (adaptive KL, d_targ = 0.01; fixed β = 1), and the paper's normalized",
            "score: per task, 0 for the random policy and 1 for the best variant's seed-mean, averaged over",
            "every run (`benchmarks/objectives.py`; the runs and their curves are in the objectives-* tables below):",
            "",
            objectives.read_text().strip(),
            "",
        ]
    for results in sorted(RESULTS.glob("*/results.md")):
        parts += [f"### {results.parent.name}", "", results.read_text().strip(), ""]
        for png in sorted(results.parent.glob("*.png")):
            parts += [f"![{png.stem}]({png.relative_to(ROOT).as_posix()})", ""]
    return "\n".join(parts)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {START} and {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{section()}\n{END}{tail}")


if __name__ == "__main__":
    main()
