"""Helpers shared by the tests: import a script as a module, run it as a subprocess, read its logs."""

import glob
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CLASSIC_CONTROL = {
    "env_id": "CartPole-v1",
    "tiny": ["--num-envs", "2", "--num-steps", "32", "--total-timesteps", "256", "--eval-episodes", "2"],
    "wrong_env": ("Pendulum-v1", "ppo_continuous.py"),
}
MUJOCO = {
    "env_id": "InvertedPendulum-v5",
    "tiny": ["--num-steps", "64", "--num-minibatches", "4", "--total-timesteps", "256", "--eval-episodes", "2"],
    "wrong_env": ("CartPole-v1", "ppo_discrete.py"),
}
# Per script: the env it trains on in the tests, the arguments of a run that takes seconds, and an
# env whose action space it refuses with the script to use instead.
SCRIPTS = {
    "ppo_discrete.py": CLASSIC_CONTROL,
    "ppo_penalty.py": CLASSIC_CONTROL,
    "ppo_lstm.py": {  # POPGym's position-only CartPole; a minibatch is whole env sequences: here one, of both envs
        "env_id": "popgym-PositionOnlyCartPoleEasy-v0",
        "tiny": ["--num-envs", "2", "--num-steps", "32", "--num-minibatches", "1", "--total-timesteps", "256"]
        + ["--eval-episodes", "2"],
        "wrong_env": ("Pendulum-v1", "ppo_continuous.py"),
    },
    "ppo_continuous.py": MUJOCO,
    "ppo_penalty_continuous.py": MUJOCO,
    "ppo_atari.py": {
        "env_id": "BreakoutNoFrameskip-v4",
        # 256 steps per env: an untrained policy ends a game of Breakout in about 170-250 steps
        # one epoch: the CNN's update is most of a tiny run's time (test_atari.py trains with the default 4)
        "tiny": ["--num-envs", "2", "--num-steps", "64", "--total-timesteps", "512", "--eval-episodes", "1"]
        + ["--update-epochs", "1"],
        "wrong_env": ("CartPole-v1", "ppo_discrete.py"),
    },
}

# Every tag a training run logs (eval/episodic_return only with --eval-episodes > 0).
TRAIN_TAGS = {
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/learning_rate",
    "charts/SPS",
    "losses/value_loss",
    "losses/policy_loss",
    "losses/entropy",
    "losses/old_approx_kl",
    "losses/approx_kl",
    "losses/clipfrac",
    "losses/explained_variance",
}


def load_script(name: str):
    """Imports ROOT/name as a module (importing must have no side effects)."""
    spec = importlib.util.spec_from_file_location(name[: -len(".py")], ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def problem(ppo, args: list[str]) -> str | None:
    """What the script's check_args says of these command-line arguments (None: nothing wrong). sys.argv holds
    them meanwhile: a script reads it to tell an argument given from one left at its default."""
    import tyro

    argv, sys.argv = sys.argv, [ppo.__file__, *args]
    try:
        ppo.check_args(tyro.cli(ppo.Args, args=args))
    except ValueError as e:
        return str(e)
    finally:
        sys.argv = argv
    return None


def run_script(script, args, cwd, timeout=300, check=True) -> subprocess.CompletedProcess:
    """Runs a script (a name under ROOT or a path) with args in cwd; returns the finished process."""
    path = script if os.path.isabs(str(script)) else ROOT / script
    proc = subprocess.run([sys.executable, str(path), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def run_dirs(cwd) -> list[str]:
    return sorted(glob.glob(os.path.join(str(cwd), "runs", "*")))


def logs(run_dir) -> dict[str, list[tuple[int, float | str]]]:
    """All scalars and texts of a run's event files: tag -> [(step, value)], as TensorBoard shows them: a resumed
    run's purge (its first event, SessionLog.START at a step) drops what earlier files logged from that step on.
    The files are read in the order they were started, not in name order as TensorBoard reads a folder: a resume
    run in-process in the same second as the run it resumes writes a file whose name sorts first (the writers'
    counter goes from ...9 to ...10)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    paths = glob.glob(os.path.join(str(run_dir), "events.out.tfevents.*"))
    files = [list(LegacyEventFileLoader(path).Load()) for path in paths]
    files = [events for events in files if events]  # a file whose writer has not flushed yet holds no event
    logged = {}
    for event in (event for events in sorted(files, key=lambda events: events[0].wall_time) for event in events):
        if event.HasField("session_log") and event.session_log.status == SessionLog.START:
            logged = {tag: [(step, v) for step, v in values if step < event.step] for tag, values in logged.items()}
        for value in event.summary.value:
            if value.HasField("simple_value"):
                logged.setdefault(value.tag, []).append((event.step, value.simple_value))
            elif value.tensor.string_val:  # add_text
                logged.setdefault(value.tag, []).append((event.step, value.tensor.string_val[0].decode()))
    return logged


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """All scalars of a run's event files, as TensorBoard shows them: tag -> [(step, value)]."""
    return {tag: values for tag, values in logs(run_dir).items() if values and not isinstance(values[0][1], str)}


def texts(run_dir) -> dict[str, list[tuple[int, str]]]:
    """All texts of a run's event files (the logged arguments), as TensorBoard shows them: tag -> [(step, text)]."""
    return {tag: values for tag, values in logs(run_dir).items() if values and isinstance(values[0][1], str)}


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def script(request) -> str:
    return request.param
