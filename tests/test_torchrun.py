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
from conftest import ROOT, SCRIPTS, run_dirs, run_script, scalars

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
WORKER = str(ROOT / "tests" / "torchrun_worker.py")


def two_process_args(script: str) -> list[str]:
    """The tiny run's arguments with two envs in all: one per process."""
    return ["--env-id", SCRIPTS[script]["env_id"], *SCRIPTS[script]["tiny"], "--num-envs", "2"]


def torchrun(script, args, cwd, **kwargs):
    return subprocess.Popen([*TORCHRUN, WORKER, script, str(cwd), *args], cwd=cwd, text=True, **kwargs)


def kept(cwd) -> list[dict]:
    return [torch.load(os.path.join(cwd, f"rank{rank}.pt"), weights_only=True) for rank in (0, 1)]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_two_processes_train_one_model_into_one_run(script, tmp_path):
    args = [*two_process_args(script), "--save-model", "--eval-episodes", "0"]
    proc = torchrun(script, args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    rank0, rank1 = kept(tmp_path)
    assert same_weights(rank0["model"], rank1["model"])  # the averaged gradient kept them identical
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
