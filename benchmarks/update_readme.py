"""Writes the results page (docs/results.md) from the files the benchmarks wrote.

    python benchmarks/update_readme.py

Replaces what lies between the markers `<!-- results:start -->` and `<!-- results:end -->` in
docs/results.md with: the SPS tables (benchmarks/results/sps.md; sps-lstm.md, ppo_lstm.py against
ppo_discrete.py), the comparison of objectives (benchmarks/results/objectives.md, from
benchmarks/objectives.py) and, for each folder of benchmarks/results/ holding a results.md, that
table and the learning-curve PNGs beside it; and, between `<!-- summary:start -->` and
`<!-- summary:end -->` in README.md, the results summary of benchmarks/summary.py.
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
    sps_lstm = RESULTS / "sps-lstm.md"
    if sps_lstm.exists():
        parts += [
            "ppo_lstm.py against ppo_discrete.py, each with its defaults on the same env and budget, trained in",
            "turn in each repeat (`benchmarks/sps.py --against`; the ratio is the median of the per-repeat ratios):",
            "",
            sps_lstm.read_text().strip(),
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
            parts += [f"![{png.stem}](../{png.relative_to(ROOT).as_posix()})", ""]
    return "\n".join(parts)


def summary() -> str:
    """The README's results summary: benchmarks/summary.py's table, its notes and its figure."""
    return "\n".join(
        [
            (RESULTS / "summary.md").read_text().strip(),
            "",
            "![learning curves](benchmarks/results/summary.png)",
        ]
    )


def replace(path: Path, start: str, end: str, content: str) -> None:
    """Puts content between the markers start and end of the file at path."""
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path.relative_to(ROOT)} lacks the markers {start} and {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{content}\n{end}{tail}")


def main() -> None:
    replace(ROOT / "docs" / "results.md", START, END, section())
    if (RESULTS / "summary.md").exists():
        replace(ROOT / "README.md", "<!-- summary:start -->", "<!-- summary:end -->", summary())


if __name__ == "__main__":
    main()
