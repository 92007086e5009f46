"""The benchmark helpers that the README's numbers come from, on tiny budgets."""

import argparse
import datetime
import fcntl
import importlib.util
import json
import os
import signal
import threading

import numpy as np
import pytest
from conftest import ROOT, load_script


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sps():
    return load_benchmark("sps")


@pytest.fixture(scope="module")
def learning():
    return load_benchmark("learning")


@pytest.mark.parametrize("script", ["ppo_discrete.py", "ppo_atari.py", "ppo_lstm.py"])
def test_time_split_covers_env_inference_and_update(sps, script, tmp_path, monkeypatch):
    """The split's parts are all measured (a wrapper that did not take effect would leave a part at 0, and
    one that counted twice would leave nothing for the update), and the script is left unpatched, its
    signal handlers restored."""
    monkeypatch.chdir(tmp_path)
    module = load_script(script)
    make_envs, agent_class, handler = module.make_envs, module.Agent, signal.getsignal(signal.SIGINT)
    tiny = ["--num-envs", "2", "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "1"]
    env_id = {"ppo_atari.py": "BreakoutNoFrameskip-v4"}.get(script, "CartPole-v1")
    split = sps.time_split(module, env_id, 128, tiny)
    assert list(split) == ["env step", "inference", "update and the rest"]
    assert all(0 < share < 1 for share in split.values()), split
    assert (module.make_envs, module.Agent) == (make_envs, agent_class)
    assert signal.getsignal(signal.SIGINT) == handler
    assert os.listdir(tmp_path) == []  # the run wrote into a temporary folder of its own


def test_side_by_side_alternates_the_order_and_reports_the_median_ratio(sps, tmp_path, monkeypatch):
    """--against: each repeat trains both scripts, the first one first in odd repeats only; the ratio is the
    median of the per-repeat ratios (here 0.5, 0.6, 0.4: 0.5), not the ratio of the medians."""
    order, speeds = [], {"a.py": iter([50.0, 60.0, 40.0]), "b.py": iter([100.0, 100.0, 100.0])}

    def fake_sps(script, env_id, total_timesteps, extra_args):
        order.append(script)
        return next(speeds[script])

    monkeypatch.setattr(sps, "ppo_sps", fake_sps)
    args = sps.argparse.Namespace(script="a.py", against="b.py", env_id="E", total_timesteps=1, repeats=3)
    args.out = tmp_path / "out.md"
    sps.side_by_side(args, [])
    assert order == ["a.py", "b.py", "b.py", "a.py", "a.py", "b.py"]
    header, _, row = args.out.read_text().splitlines()
    assert header.startswith("| script | against |")
    assert row.startswith("| a.py | b.py | E | 50 | 100 | 0.50 (0.40-0.60) | 3 |")


def test_summary_says_below_where_we_are_below_and_compares_only_at_the_same_budget(monkeypatch):
    summary = load_benchmark("summary")
    day = int(datetime.datetime(2026, 12, 2, 12).timestamp())
    run = {"total_timesteps": 1000, "run_dir": f"runs/X__a__1__{day}"}
    finals = {"below": [90.0, 110.0], "above": [300.0, 320.0]}  # means 100 and 310

    def runs(folder, env_id, label):
        return [run | {"final_return": value} for value in finals[env_id]]

    monkeypatch.setattr(summary, "runs", runs)
    monkeypatch.setattr(summary, "TASKS", [(env, "f", "clip", "s.py", None) for env in ("below", "above")])
    published = [("A", "same budget", "200.0 ± 5.0", 1000, "http://a"), ("B", "10x", "50", 10000, "http://b")]
    monkeypatch.setattr(summary, "PUBLISHED", {"below": published, "above": published})
    rows = summary.table().splitlines()
    assert rows[2].startswith("| below | s.py | 100.0 ± 10.0 (2 seeds, 0.001M steps, 2026-12-02) |")
    assert rows[2].endswith("| A: below; B: other budget |")
    assert rows[3].endswith("| A: at or above; B: other budget |")


def test_normalized_score_is_zero_for_the_random_policy_and_one_for_the_best_variant():
    objectives = load_benchmark("objectives")
    rows = [  # task A: random -100, best seed-mean 300 (clip); task B: random 0, best 50 (kl)
        *({"env_id": "A", "label": "clip", "seed": i, "final_return": r} for i, r in enumerate((250.0, 350.0), 1)),
        *({"env_id": "A", "label": "kl", "seed": i, "final_return": r} for i, r in enumerate((100.0, 100.0), 1)),
        *({"env_id": "B", "label": "clip", "seed": i, "final_return": r} for i, r in enumerate((0.0, 10.0), 1)),
        *({"env_id": "B", "label": "kl", "seed": i, "final_return": r} for i, r in enumerate((40.0, 60.0), 1)),
    ]
    scores = objectives.normalized_scores(rows, {"A": -100.0, "B": 0.0})
    # clip: A (350/400 + 450/400) / 2 = 1, B (0 + 0.2) / 2 = 0.1; kl: A 200/400 = 0.5, B (0.8 + 1.2) / 2 = 1
    assert list(scores) == ["clip", "kl"]
    assert scores["clip"] == pytest.approx([0.875, 1.125, 0.0, 0.2])  # per run: A 350/400, 450/400; B 0/50, 10/50
    assert scores["kl"] == pytest.approx([0.5, 0.5, 0.8, 1.2])
    assert (np.mean(scores["clip"]), np.mean(scores["kl"])) == pytest.approx(((1.0 + 0.1) / 2, (0.5 + 1.0) / 2))
    objectives.check_rows(rows, {"A": -100.0, "B": 0.0})
    with pytest.raises(ValueError, match="holds a run twice"):  # a folder given twice
        objectives.check_rows(rows + rows, {"A": -100.0, "B": 0.0})
    with pytest.raises(ValueError, match="seeds differ"):  # kl has one run on B, clip two
        objectives.check_rows(rows[:-1], {"A": -100.0, "B": 0.0})
    with pytest.raises(ValueError, match="beats the random policy"):
        objectives.check_rows(rows, {"A": -100.0, "B": 50.0})
    # the random policy's return of an env, measured: uniform random actions never balance the pendulum long
    assert 0 < objectives.random_return("InvertedPendulum-v5", episodes=5) < 50


def test_results_table_dates_the_runs_it_holds_not_the_day_it_was_written(learning):
    """--reuse keeps runs from earlier sessions: the table's date names the days they started."""
    started = [int(datetime.datetime(2026, 11, day, 12).timestamp()) for day in (23, 23, 30)]
    rows = [{"run_dir": f"raw/runs/Hopper-v5__ppo_continuous_clip__{i}__{t}"} for i, t in enumerate(started)]
    assert learning.run_dates(rows[:2]) == "2026-11-23"
    assert learning.run_dates(rows) == "2026-11-23 to 2026-11-30 (--reuse)"


@pytest.mark.parametrize("threshold", [None, 20.0])
def test_results_table_has_threshold_columns_only_for_a_threshold(learning, tmp_path, threshold):
    row = {"env_id": "E", "label": "A", "final_return": 10.0, "sps": 100.0, "peak_rss_mb": 300}
    row |= {"steps_to_threshold": None, "seconds_to_threshold": None, "run_dir": "raw/runs/E__a__1__1796000000"}
    args = argparse.Namespace(
        threshold=threshold, total_timesteps=1000, seeds=[1], env_ids=["E"], variants=[("A", 0, 0)]
    )
    learning.write_table([row], args, "python benchmarks/learning.py", tmp_path)
    header, rule, line = (tmp_path / "results.md").read_text().splitlines()[3:]
    assert "None" not in header and ("steps to 20.0 | seconds to 20.0 | runs reaching it" in header) == bool(threshold)
    assert header.count("|") == rule.count("|") == line.count("|") == (9 if threshold else 6)
    assert (
        line == "| E | A | 10.0 ± 0.0 | " + ("not reached | not reached | 0/1 | " if threshold else "") + "100 | 300 |"
    )


def test_invocations_sharing_an_out_folder_keep_each_others_runs(learning, tmp_path):
    def run(label, seed, final):
        return {"label": label, "script": "s.py", "args": [], "env_id": "E", "seed": seed, "final_return": final}

    def saved():
        return {
            (r["label"], r["seed"]): r["final_return"]
            for r in json.loads((tmp_path / "results.json").read_text())["rows"]
        }

    learning.save_results(tmp_path, "a", [run("clip", 1, 1.0)], keep_saved=True)
    learning.save_results(tmp_path, "b", [run("kl", 1, 2.0)], keep_saved=True)  # a second invocation, same folder
    learning.save_results(tmp_path, "a", [run("clip", 1, 1.0), run("clip", 2, 3.0)], keep_saved=True)
    assert saved() == {("clip", 1): 1.0, ("kl", 1): 2.0, ("clip", 2): 3.0}
    learning.save_results(tmp_path, "b", [run("kl", 1, 4.0)], keep_saved=True)  # a rerun replaces its own run
    assert saved() == {("clip", 1): 1.0, ("kl", 1): 4.0, ("clip", 2): 3.0}
    learning.save_results(tmp_path, "c", [run("kl", 1, 5.0)], keep_saved=False)  # without --reuse: a fresh file
    assert saved() == {("kl", 1): 5.0}


def test_results_are_saved_under_the_lock(learning, tmp_path):
    """While another invocation holds results.lock, a save waits: its read-merge-write cannot interleave."""
    row = {"label": "clip", "script": "s.py", "args": [], "env_id": "E", "seed": 1, "final_return": 1.0}
    with open(tmp_path / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saver = threading.Thread(target=learning.save_results, args=(tmp_path, "a", [row], True))
        saver.start()
        saver.join(timeout=0.5)
        assert saver.is_alive() and not (tmp_path / "results.json").exists()
    saver.join(timeout=10)
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == [row]


def test_atari_fire_variant_presses_fire_after_each_life_loss(tmp_path, monkeypatch):
    """benchmarks/atari_fire.py's copy of ppo_atari.py takes FIRE as the action right after a life loss (and only
    then), and refuses a ppo_atari.py its patches no longer fit."""
    fire = load_benchmark("atari_fire")
    variant_path = tmp_path / "ppo_atari_fire.py"
    variant_path.write_text(fire.fire_after_life_loss((ROOT / "ppo_atari.py").read_text()))
    variant = load_script(str(variant_path))
    taken, lost = [], []
    step = variant.AtariVectorEnv.step

    def recording_step(self, actions):
        result = step(self, actions)
        taken.append(np.array(actions, copy=True))
        lost.append(result[4]["lives"].copy())
        return result

    monkeypatch.setattr(variant.AtariVectorEnv, "step", recording_step)
    monkeypatch.chdir(tmp_path)
    args = ["--num-envs", "2", "--num-steps", "128", "--total-timesteps", "512", "--eval-episodes", "0"]
    monkeypatch.setattr("sys.argv", ["ppo_atari_fire.py", *args, "--update-epochs", "1", "--num-threads", "1"])
    import tyro

    variant.main(tyro.cli(variant.Args, args=[*args, "--update-epochs", "1", "--num-threads", "1"]))
    lives = np.stack(lost)  # (steps, envs) after each step
    life_lost = (lives[1:] < lives[:-1]) & (lives[1:] > 0)  # a life lost at step t + 1, the game going on
    assert life_lost.any(), "the run must lose a life"
    np.testing.assert_array_equal(np.stack(taken)[2:][life_lost[:-1]], 1)  # FIRE, the step after each loss
    with pytest.raises(SystemExit, match="ppo_atari.py changed"):
        fire.fire_after_life_loss("")
