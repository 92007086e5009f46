"""Data-parallel training under torchrun: each script on two CPU processes (gloo) on a tiny budget, run
through tests/torchrun_worker.py, which keeps what each rank ends with."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import tyro
from conftest import ROOT, SCRIPTS, load_script, run_dirs, run_script, scalars

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
WORKER = str(ROOT / "tests" / "torchrun_worker.py")


def two_process_args(script: str) -> list[str]:
    """The tiny run's arguments with two envs in all: one per process."""
    return ["--env-id", SCRIPTS[script]["env_id"], *SCRIPTS[script]["tiny"], "--num-envs", "2"]


def torchrun(script, args, cwd, **kwargs):
    return subprocess.Popen([*TORCHRUN, WORKER, script, str(cwd), *args], cwd=cwd, text=True, **kwargs)


def run_to_the_end(script, args, cwd) -> tuple[int, str]:
    """torchrun to its end: (exit status, stderr)."""
    proc = torchrun(script, args, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def kept(cwd) -> list[dict]:
    return [torch.load(os.path.join(cwd, f"rank{rank}.pt"), weights_only=True) for rank in (0, 1)]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_two_processes_train_one_model_into_one_run(script, tmp_path):
    args = [*two_process_args(script), "--save-model", "--eval-episodes", "0"]
    returncode, stderr = run_to_the_end(script, args, tmp_path)
    assert returncode == 0, stderr[-3000:]
    rank0, rank1 = kept(tmp_path)
    assert same_weights(rank0["model"], rank1["model"])  # the averaged gradient kept them identical
    # the script's destroy_process_group ended gloo's threads: one still running as Python exits can hold the
    # last reference to a finished all-reduce and abort the process (SIGABRT: 4 of 19 runs on 2 busy cores)
    assert rank0["gloo_threads"] == rank1["gloo_threads"] == ([] if sys.platform == "linux" else None)
    if "penalty" in script:  # β adapts to d averaged over both ranks' batches, so it stays the same on both
        assert len(rank0["kl"]) >= 2 and rank0["kl"] == rank1["kl"]
    (run_dir,) = run_dirs(tmp_path)  # one run folder, written by rank 0
    logged = scalars(run_dir)
    steps = [step for step, _ in logged["charts/learning_rate"]]
    total = int(args[args.index("--total-timesteps") + 1])
    assert steps[-1] == total and steps == [steps[0] * (i + 1) for i in range(len(steps))]  # both ranks' steps
    # every episode either process ended is in rank 0's log
    assert len(logged["charts/episodic_return"]) == rank0["episodes"] + rank1["episodes"] > 0
    (path,) = glob.glob(os.path.join(run_dir, "*.pt"))
    assert same_weights(torch.load(path, weights_only=True)["model"], rank0["model"])
    os.mkdir(tmp_path / "eval")
    proc = run_script(script, ["--eval-checkpoint", path, "--eval-episodes", "1"], tmp_path / "eval")
    assert "eval: return" in proc.stdout


def test_sigterm_to_torchrun_stops_both_processes_after_the_same_iteration_and_resume_continues(tmp_path):
    script = "ppo_discrete.py"
    args = [*two_process_args(script), "--total-timesteps", "100000000", "--save-model", "--eval-episodes", "0"]
    proc = torchrun(script, args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training has logged a few updates
        dirs = run_dirs(tmp_path)
        if dirs and len(scalars(dirs[0]).get("charts/learning_rate", [])) >= 2:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    output, _ = proc.communicate(timeout=120)
    assert output.count("SIGTERM: stopping after this iteration") == 2, output[-3000:]
    rank0, rank1 = kept(tmp_path)  # both processes got to the end of the script
    assert same_weights(rank0["model"], rank1["model"])
    (run_dir,) = run_dirs(tmp_path)
    checkpoint = torch.load(os.path.join(run_dir, "ppo_discrete.pt"), weights_only=True)
    assert checkpoint["global_step"] == scalars(run_dir)["charts/learning_rate"][-1][0]
    assert same_weights(checkpoint["model"], rank0["model"])
    assert not glob.glob(os.path.join(run_dir, "*.tmp"))
    # --resume under torchrun: two more iterations, in the same run folder
    batch_size = checkpoint["global_step"] // checkpoint["iteration"]
    total = str(checkpoint["global_step"] + 2 * batch_size)
    path = os.path.join(run_dir, "ppo_discrete.pt")
    proc = torchrun(script, ["--resume", path, "--total-timesteps", total], tmp_path, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert run_dirs(tmp_path) == [run_dir]
    assert scalars(run_dir)["charts/learning_rate"][-1][0] == int(total)
    rank0, rank1 = kept(tmp_path)
    assert same_weights(rank0["model"], rank1["model"])
    assert torch.load(path, weights_only=True)["global_step"] == int(total)


def test_a_bad_argument_under_torchrun_is_said_once_and_nothing_is_written(tmp_path):
    args = [*two_process_args("ppo_discrete.py"), "--num-envs", "3"]
    proc = torchrun("ppo_discrete.py", args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert stderr.count("ppo_discrete.py: error: --num-envs must divide by the 2 torchrun processes\n") == 1
    assert run_dirs(tmp_path) == []


@pytest.mark.parametrize("script", ["ppo_discrete.py", "ppo_atari.py"])
def test_each_update_steps_with_the_mean_of_the_ranks_gradients(script, tmp_path):
    """The gradient each rank clips and steps with is the mean of the two ranks' own gradients, at every
    update: what one process would compute on both minibatches with the mean loss. A sum, a max or rank 0's
    gradient sent to both would also keep the ranks identical; only the mean passes here. The averaged gradient
    keeps its parameter's layout (ppo_atari.py's channels_last convolutions), which fused Adam relies on."""
    env = {**os.environ, "WORKER_KEEP_GRADS": "1"}
    args = [*two_process_args(script), "--eval-episodes", "0"]
    proc = torchrun(script, args, tmp_path, env=env, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    rank0, rank1 = kept(tmp_path)
    parsed = tyro.cli(load_script(script).Args, args=args)
    updates = parsed.num_iterations * parsed.update_epochs * parsed.num_minibatches  # 64 on the tiny budget
    assert [len(rank[key]) for rank in (rank0, rank1) for key in ("own_grads", "reduced_grads")] == [updates] * 4
    assert all(rank0["layouts"]) and all(rank1["layouts"])
    for own0, own1, reduced0, reduced1 in zip(
        rank0["own_grads"], rank1["own_grads"], rank0["reduced_grads"], rank1["reduced_grads"], strict=True
    ):
        assert own0.keys() == own1.keys() == reduced0.keys() == reduced1.keys() == dict(rank0["model"]).keys()
        for name in own0:
            a, b = own0[name], own1[name]
            assert torch.equal(reduced0[name], reduced1[name])  # the same step on both ranks
            # a + b in float32 rounds once (at most 2^-24 of |a| + |b|) and / 2 is exact, in whatever order
            # the collective adds: 1e-6 of |a| + |b| is 16 roundings. A sum is off by |a + b| / 2, a max or
            # rank 0's gradient by |a - b| / 2, and the two ranks' gradients differ by far more (below).
            bound = 1e-6 * (a.abs() + b.abs()) + torch.finfo(torch.float32).tiny
            assert ((reduced0[name] - (a + b) / 2).abs() <= bound).all(), name
    # the check has teeth: the ranks' own gradients differ (their minibatches hold different envs' steps)
    a, b = (
        torch.cat([g.flatten() for g in rank0["own_grads"][0].values()]),
        torch.cat([g.flatten() for g in rank1["own_grads"][0].values()]),
    )
    assert (a - b).abs().max() > 0.1 * torch.maximum(a.abs(), b.abs()).max()
    assert (a + b).abs().max() > 0.1 * torch.maximum(a.abs(), b.abs()).max()


def test_a_frozen_layer_trains_under_torchrun_and_stays_as_it_was(tmp_path):
    """A researcher freezes the critic's first layer (requires_grad_(False)): its parameters have no gradient,
    which the all-reduce must skip; the layer keeps rank 0's initial weights on both ranks, the rest trains."""
    script, frozen = "ppo_discrete.py", "critic.0"
    env = {**os.environ, "WORKER_FREEZE": frozen}
    args = [*two_process_args(script), "--eval-episodes", "0"]
    proc = torchrun(script, args, tmp_path, env=env, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    rank0, rank1 = kept(tmp_path)
    assert same_weights(rank0["model"], rank1["model"])
    names = [name for name in rank0["model"] if name.startswith(frozen + ".")]
    assert names == [f"{frozen}.weight", f"{frozen}.bias"]
    for name in names:  # every rank starts from rank 0's weights
        assert torch.equal(rank0["model"][name], rank0["initial"][name])
        assert torch.equal(rank1["model"][name], rank0["initial"][name])
    # the rest trained: every other layer moved
    for name in rank0["model"].keys() - set(names):
        assert not torch.equal(rank0["model"][name], rank0["initial"][name]), name


@pytest.mark.parametrize("script", ["ppo_continuous.py"])
def test_the_ranks_normalization_statistics_merge_into_those_of_all_their_steps(script, tmp_path):
    """After each iteration every rank holds one statistic of every rank's steps: the counts of the steps each rank
    added since the last merge summed onto the shared one, and their sums (mean · count) too; a plain average of the
    ranks' means and variances, or a prior counted once per rank, fails."""
    import numpy as np

    args = [*two_process_args(script), "--total-timesteps", "512", "--eval-episodes", "0"]
    proc = torchrun(script, args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    rank0, rank1 = (
        {"merges": [[(m.numpy(), v.numpy(), c) for m, v, c in pair] for pair in r["merges"]]} for r in kept(tmp_path)
    )
    assert len(rank0["merges"]) == len(rank1["merges"]) == 2 * 4  # obs and return statistics, 4 iterations
    priors = [(np.zeros(rank0["merges"][k][0][0].shape), np.ones(rank0["merges"][k][0][1].shape), 1e-4) for k in (0, 1)]
    for k, ((own0, merged0), (own1, merged1)) in enumerate(zip(rank0["merges"], rank1["merges"], strict=True)):
        for a, b in zip(merged0, merged1, strict=True):
            np.testing.assert_array_equal(a, b)  # the same statistic on both ranks
        prior_mean, prior_var, prior_count = priors[k % 2]
        added = [own[2] - prior_count for own in (own0, own1)]
        assert min(added) > 0  # each rank saw steps of its own since the last merge
        count = prior_count + sum(added)
        assert merged0[2] == pytest.approx(count, rel=1e-12)  # float64 sums of a few hundred
        mean = (prior_count * prior_mean + sum(o[2] * o[0] - prior_count * prior_mean for o in (own0, own1))) / count
        # float64 moments of normalized-scale values (|x| up to ~10): 1e-9 leaves room for the sums' rounding
        np.testing.assert_allclose(merged0[0], mean, rtol=1e-9, atol=1e-12)
        squares = prior_count * (prior_var + prior_mean**2)
        squares += sum(o[2] * (o[1] + o[0] ** 2) - prior_count * (prior_var + prior_mean**2) for o in (own0, own1))
        np.testing.assert_allclose(merged0[1], squares / count - mean**2, rtol=1e-9, atol=1e-12)
        priors[k % 2] = merged0
