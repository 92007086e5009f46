"""Runs PPO variants on env ids and seeds, one after the other, and writes a results table and
learning curves read from the TensorBoard files.

    python benchmarks/learning.py --env-ids CartPole-v1 Acrobot-v1 --seeds 1 2 3 \
        --variant "clip=ppo_discrete.py" --out benchmarks/results/discrete

A variant is LABEL=SCRIPT [ARGS...]; its extra args go to the script. Each run's folder, table row
and curve come from the same event file. Written to --out: results.md (mean ± std over seeds of
the final return = mean over episodes in the last 10% of steps, steps and wall seconds until the
20-episode moving mean first reaches --threshold, SPS, peak RSS), results.json, one PNG per env.

results.json is saved after every run, so --reuse continues an interrupted benchmark. Two invocations
with --reuse may share --out to use two cores (say, one per variant): each adds its runs to
results.json under a lock; then one invocation with every variant and --reuse (it runs nothing more)
writes the table.
"""

import argparse
import datetime
import fcntl
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 20  # episodes in the moving mean that must reach the threshold


def read_scalars(run_dir: str) -> dict[str, list[tuple[float, int, float]]]:
    """tag -> [(wall_time, step, value)] of every scalar in the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.wall_time, e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def summarize(logged: dict, total_timesteps: int, threshold: float | None, start_time: float) -> dict:
    episodes = logged.get("charts/episodic_return", [])
    steps = np.array([s for _, s, _ in episodes])
    returns = np.array([v for _, _, v in episodes])
    last = returns[steps >= 0.9 * total_timesteps]
    row = {
        "final_return": float(last.mean()) if len(last) else float("nan"),
        "sps": logged["charts/SPS"][-1][2] if "charts/SPS" in logged else float("nan"),
        "steps_to_threshold": None,
        "seconds_to_threshold": None,
    }
    if threshold is not None:
        for k in range(WINDOW, len(returns) + 1):
            if returns[k - WINDOW : k].mean() >= threshold:
                row["steps_to_threshold"] = int(steps[k - 1])
                row["seconds_to_threshold"] = round(episodes[k - 1][0] - start_time, 1)
                break
    return row


def run_one(label, script, extra, env_id, seed, total_timesteps, threshold, workdir) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    exp_name = f"{Path(script).stem}_{label}".replace(" ", "_").replace("=", "").replace("β", "beta")
    args = [str(ROOT / script), "--env-id", env_id, "--seed", str(seed), "--total-timesteps", str(total_timesteps)]
    args += ["--exp-name", exp_name, "--eval-episodes", "0", *extra]
    start = time.time()
    proc = subprocess.Popen([sys.executable, *args], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} {env_id} seed {seed} failed:\n{stderr}")
    run_dir = max((workdir / "runs").glob(f"{env_id.replace('/', '-')}__{exp_name}__{seed}__*"), key=os.path.getmtime)
    logged = read_scalars(str(run_dir))
    row = summarize(logged, total_timesteps, threshold, start)
    row.update(
        label=label,
        script=script,
        args=extra,
        env_id=env_id,
        seed=seed,
        wall_s=round(time.time() - start, 1),
        total_timesteps=total_timesteps,
        peak_rss_mb=round(rusage.ru_maxrss / 1024),
        run_dir=str(run_dir),
    )
    row["curve"] = [(s, v) for _, s, v in logged.get("charts/episodic_return", [])]
    print(
        f"{label:>16} {env_id:>16} seed {seed}: final {row['final_return']:9.2f}  SPS {row['sps']:7.0f}  "
        f"wall {row['wall_s']:7.1f}s  to threshold {row['steps_to_threshold']}",
        flush=True,
    )
    return row


def fmt(values, digits=1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "not reached"
    digits = 2 if digits == 1 and max(abs(v) for v in values) < 10 else digits  # returns of order 1 (POPGym)
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def run_dates(rows) -> str:
    """The dates the runs started, from their run folders (CleanRL's name ends in the start's Unix time)."""
    days = sorted({datetime.date.fromtimestamp(int(r["run_dir"].rsplit("__", 1)[1])).isoformat() for r in rows})
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]} (--reuse)"


def write_table(rows, args, command: str, out: Path) -> None:
    timed = args.threshold is not None  # without --threshold, no columns for it
    lines = [
        f"Command: `{command}`  ",
        f"Date: {run_dates(rows)}; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads as each script's default; {args.total_timesteps} steps per run, seeds {args.seeds}.",
        "",
        "| env | variant | final return (mean ± std over seeds) | "
        + (f"steps to {args.threshold} | seconds to {args.threshold} | runs reaching it | " if timed else "")
        + "SPS (median) | peak RSS MB (max) |",
        "|-|-|-|-|-|" + ("-|-|-|" if timed else ""),
    ]
    for env_id in args.env_ids:
        for label, _, _ in args.variants:
            group = [r for r in rows if r["env_id"] == env_id and r["label"] == label]
            reached = [r for r in group if r["steps_to_threshold"] is not None]
            lines.append(
                f"| {env_id} | {label} | {fmt([r['final_return'] for r in group])} | "
                + (
                    f"{fmt([r['steps_to_threshold'] for r in reached], 0)} | "
                    f"{fmt([r['seconds_to_threshold'] for r in reached])} | {len(reached)}/{len(group)} | "
                    if timed
                    else ""
                )
                + f"{np.median([r['sps'] for r in group]):.0f} | {max(r['peak_rss_mb'] for r in group)} |"
            )
    (out / "results.md").write_text("\n".join(lines) + "\n")


def smoothed(row: dict, grid: np.ndarray) -> np.ndarray:
    """The run's WINDOW-episode moving mean of the training return, interpolated at the steps of grid."""
    steps, values = np.array(row["curve"]).T if row["curve"] else (np.zeros(1), np.zeros(1))
    smooth = np.convolve(values, np.ones(WINDOW) / WINDOW, mode="valid") if len(values) >= WINDOW else values
    return np.interp(grid, steps[len(steps) - len(smooth) :], smooth)


def plot_curves(rows, args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, args.total_timesteps, 101)
    for env_id in args.env_ids:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, _, _ in args.variants:
            curves = [smoothed(r, grid) for r in rows if r["env_id"] == env_id and r["label"] == label]
            mean, std = np.mean(curves, axis=0), np.std(curves, axis=0)
            ax.plot(grid, mean, label=f"{label} ({len(curves)} seeds)")
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
        ax.set(title=env_id, xlabel="environment steps", ylabel=f"episodic return ({WINDOW}-episode mean)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{env_id.replace('/', '-')}.png", dpi=100)
        plt.close(fig)


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    match = re.fullmatch(r"(.+)=(\S+\.py)(\s.*)?", text)  # the label may hold "=" itself: "fixed β=1"
    if not match or not (ROOT / match[2]).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=SCRIPT [ARGS...] with SCRIPT in {ROOT}")
    return match[1], match[2], shlex.split(match[3] or "")


def row_key(row: dict) -> tuple:
    return row["label"], row["script"], tuple(row["args"]), row["env_id"], row["seed"]


def save_results(out: Path, command: str, rows: list[dict], keep_saved: bool) -> None:
    """Writes rows to out/results.json; with keep_saved, also the runs already there that rows does not replace
    (an earlier invocation's, or a parallel one's: the lock lets two invocations share --out)."""
    with open(out / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = out / "results.json"
        saved = json.loads(path.read_text())["rows"] if keep_saved and path.exists() else []
        merged = {row_key(r): r for r in saved} | {row_key(r): r for r in rows}
        path.write_text(json.dumps({"command": command, "rows": list(merged.values())}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-ids", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--total-timesteps", type=int, required=True)
    parser.add_argument("--variant", dest="variants", action="append", type=parse_variant, required=True)
    parser.add_argument("--threshold", type=float, default=None, help="return whose first crossing is timed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reuse", action="store_true", help="keep the runs --out/results.json already holds")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    done = {}
    if args.reuse and (args.out / "results.json").exists():
        for row in json.loads((args.out / "results.json").read_text())["rows"]:
            done[row_key(row)] = row
    rows = []
    for env_id in args.env_ids:
        for label, script, extra in args.variants:
            for seed in args.seeds:
                key = (label, script, tuple(extra), env_id, seed)
                if key in done and done[key].get("total_timesteps") == args.total_timesteps:
                    rows.append(done[key])
                    continue
                workdir = args.out / "raw"
                rows.append(run_one(label, script, extra, env_id, seed, args.total_timesteps, args.threshold, workdir))
                # saved after every run: an interrupted benchmark continues with --reuse
                save_results(args.out, command, rows, keep_saved=args.reuse)
    save_results(args.out, command, rows, keep_saved=args.reuse)
    write_table(rows, args, command, args.out)
    plot_curves(rows, args, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
