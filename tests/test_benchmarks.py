"""The benchmark helpers that the README's numbers come from, on tiny budgets."""

import importlib.util
import os
import signal

import pytest
from conftest import ROOT, load_script


@pytest.fixture(scope="module")
def sps():
    spec = importlib.util.spec_from_file_location("sps", ROOT / "benchmarks" / "sps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["ppo_discrete.py", "ppo_atari.py"])
def test_time_split_covers_env_inference_and_update(sps, script, tmp_path, monkeypatch):
    """The split's parts are all measured (a wrapper that did not take effect would leave a part at 0, and
    one that counted twice would leave nothing for the update), and the script is left unpatched, its
    signal handlers restored."""
    monkeypatch.chdir(tmp_path)
    module = load_script(script)
    make_envs, agent_class, handler = module.make_envs, module.Agent, signal.getsignal(signal.SIGINT)
    tiny = ["--num-envs", "2", "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "1"]
    env_id = {"ppo_discrete.py": "CartPole-v1", "ppo_atari.py": "BreakoutNoFrameskip-v4"}[script]
    split = sps.time_split(module, env_id, 128, tiny)
    assert list(split) == ["env step", "inference", "update and the rest"]
    assert all(0 < share < 1 for share in split.values()), split
    assert (module.make_envs, module.Agent) == (make_envs, agent_class)
    assert signal.getsignal(signal.SIGINT) == handler
    assert os.listdir(tmp_path) == []  # the run wrote into a temporary folder of its own
