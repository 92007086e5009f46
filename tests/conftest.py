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


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """All scalars of a run's event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def script(request) -> str:
    return request.param
