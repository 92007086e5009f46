"""Tests of what is specific to ppo_continuous.py: the Gaussian policy, action clipping, observation and
reward normalization (shared by the envs, checkpointed, frozen in evaluation), its errors, and learning.
The policy and learning tests also run ppo_penalty_continuous.py, whose Agent serves the exact KL too; its
environment is the same text (tests/test_variants.py)."""

import math
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, load_script, run_dirs, run_script, scalars
from gymnasium.envs.mujoco.inverted_pendulum_v5 import InvertedPendulumEnv
from gymnasium.wrappers.utils import RunningMeanStd

SCRIPT = "ppo_continuous.py"
ENV_ID = "InvertedPendulum-v5"  # 4-dim obs, 1-dim action in [-3, 3], episodes of a few steps at first
TINY = ["--env-id", ENV_ID, "--num-steps", "32", "--num-minibatches", "4", "--total-timesteps", "128"]


@pytest.fixture(scope="module")
def ppo():
    return load_script(SCRIPT)


@pytest.fixture(params=[SCRIPT, "ppo_penalty_continuous.py"])
def gaussian(request):
    return load_script(request.param)


@pytest.fixture
def raw_steps(monkeypatch):
    """Records, per InvertedPendulum instance, the raw action it received and the raw obs it returned."""
    received = []
    original = InvertedPendulumEnv.step

    def step(self, action):
        received.append(np.array(action, copy=True))
        result = original(self, action)
        self.last_raw_obs = result[0].copy()
        return result

    monkeypatch.setattr(InvertedPendulumEnv, "step", step)
    return received


def load_trained(ppo, path):
    """The agent and observation statistic of a checkpoint of InvertedPendulum."""
    checkpoint = torch.load(path, weights_only=True)
    agent = ppo.Agent(4, 1)
    agent.load_state_dict(checkpoint["model"])
    obs_rms = RunningMeanStd(shape=(4,))
    state = checkpoint["obs_rms"]
    obs_rms.mean, obs_rms.var, obs_rms.count = state["mean"].numpy(), state["var"].numpy(), state["count"]
    return agent, obs_rms


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny InvertedPendulum run with 2 envs and --save-model: (cwd, checkpoint path)."""
    cwd = tmp_path_factory.mktemp("trained")
    run_script(SCRIPT, [*TINY, "--num-envs", "2", "--save-model", "--eval-episodes", "0"], cwd)
    (run_dir,) = run_dirs(cwd)
    return cwd, os.path.join(run_dir, "ppo_continuous.pt")


# ---- policy ----
def test_logprob_and_entropy_are_normal_summed_over_action_dims(gaussian):
    torch.manual_seed(0)
    agent = gaussian.Agent(5, 3)
    with torch.no_grad():  # far from the initial N(0, 1), and a different std per dimension
        agent.actor_mean[-1].weight.mul_(100)
        agent.actor_logstd.copy_(torch.tensor([[-1.0, 0.3, 1.2]]))
    x, actions = torch.randn(7, 5), torch.randn(7, 3) * 2
    _, logprob, entropy, value = agent.get_action_and_value(x, actions)
    reference = torch.distributions.Normal(agent.actor_mean(x), agent.actor_logstd.exp())
    torch.testing.assert_close(logprob, reference.log_prob(actions).sum(-1))
    torch.testing.assert_close(entropy, reference.entropy().sum(-1).expand(7))
    torch.testing.assert_close(value, agent.get_value(x))
    assert logprob.shape == entropy.shape == (7,)


def test_sampled_actions_follow_the_policy_and_are_scored_as_sampled(gaussian):
    torch.manual_seed(0)
    agent = gaussian.Agent(5, 2)
    with torch.no_grad():
        agent.actor_logstd.copy_(torch.tensor([[-0.5, 0.7]]))
    x = torch.randn(1, 5).expand(50000, -1)
    action, logprob, _, _ = agent.get_action_and_value(x)
    mean = agent.actor_mean(x[:1]).detach()[0]
    torch.testing.assert_close(action.mean(0), mean, atol=0.04, rtol=0)
    torch.testing.assert_close(action.std(0), agent.actor_logstd.exp().detach()[0], atol=0, rtol=0.02)
    torch.testing.assert_close(logprob, agent.get_action_and_value(x, action)[1])


def test_log_std_starts_at_zero_and_does_not_depend_on_the_state(gaussian):
    torch.manual_seed(0)
    agent = gaussian.Agent(6, 4)
    assert agent.actor_logstd.shape == (1, 4) and (agent.actor_logstd == 0).all()
    assert agent.actor_logstd.requires_grad  # learned
    with torch.no_grad():
        agent.actor_logstd.copy_(torch.randn(1, 4))
    _, _, entropy, _ = agent.get_action_and_value(torch.randn(9, 6) * 10)
    assert torch.allclose(entropy, entropy[0].expand(9))  # the same spread in every state
    # at log σ = 0 the entropy of each dimension is that of N(0, 1)
    _, _, entropy, _ = gaussian.Agent(6, 4).get_action_and_value(torch.randn(2, 6))
    torch.testing.assert_close(entropy, torch.full((2,), 4 * 0.5 * math.log(2 * math.pi * math.e)))


def test_env_gets_the_clipped_action_and_training_stores_and_scores_the_unclipped_one(
    ppo, raw_steps, monkeypatch, tmp_path
):
    sampled, scored = [], []

    class WideAgent(ppo.Agent):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                self.actor_logstd.fill_(1.5)  # σ ≈ 4.5: about half the draws fall outside [-3, 3]

        def get_action(self, x, action=None, deterministic=False):  # the rollout's call, and inside the update's
            result = super().get_action(x, action, deterministic)
            (sampled if action is None else scored).append(result[0].detach().clone())
            return result

    monkeypatch.setattr(ppo, "Agent", WideAgent)
    monkeypatch.chdir(tmp_path)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        args = dict(num_steps=64, num_minibatches=4, update_epochs=1, total_timesteps=64, eval_episodes=0)
        ppo.main(ppo.Args(env_id=ENV_ID, **args))
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    rollout = torch.cat(sampled).numpy()  # (64, 1)
    assert rollout.shape == (64, 1) and np.abs(rollout).max() > 3
    np.testing.assert_array_equal(np.stack(raw_steps), np.clip(rollout, -3, 3))
    np.testing.assert_array_equal(np.sort(torch.cat(scored).numpy(), axis=0), np.sort(rollout, axis=0))


# ---- normalization ----
def test_one_observation_and_one_return_statistic_shared_by_all_envs(ppo):
    num_envs, num_steps = 3, 40
    envs = ppo.make_envs(ENV_ID, num_envs, False, "test", 0.99)
    sub_envs = envs.unwrapped.envs
    assert all(env.get_wrapper_attr("obs_rms") is envs.obs_rms for env in sub_envs)
    envs.reset(seed=0)
    resets = 0
    for _ in range(num_steps):
        _, _, terminations, truncations, _ = envs.step(np.full((num_envs, 1), 3.0, dtype=np.float32))
        resets += int(np.logical_or(terminations, truncations).sum())
    envs.close()
    assert resets > 0
    # every obs of every env, first obs of each episode included, updated the one statistic
    assert envs.obs_rms.count == pytest.approx(1e-4 + num_envs + num_envs * num_steps + resets)
    assert envs.return_rms.count == pytest.approx(1e-4 + num_envs * num_steps)


def test_next_and_final_obs_go_through_the_same_normalization_and_clip(ppo, raw_steps):
    envs = ppo.make_envs(ENV_ID, 2, False, "test", 0.99)
    envs.obs_rms.mean, envs.obs_rms.var = np.array([0.5, -0.2, 0.0, 1.0]), np.array([4.0, 0.25, 1e-6, 9.0])
    for env in envs.unwrapped.envs:
        env.set_wrapper_attr("update_running_mean", False)
    normalized = lambda raw: np.clip((raw - envs.obs_rms.mean) / np.sqrt(envs.obs_rms.var + 1e-8), -10, 10)  # noqa: E731
    envs.reset(seed=0)
    finals = 0
    rng = np.random.default_rng(0)
    for _ in range(60):
        next_obs, _, terminations, truncations, infos = envs.step(rng.uniform(-3, 3, (2, 1)).astype(np.float32))
        for i, env in enumerate(envs.unwrapped.envs):
            raw = env.unwrapped.last_raw_obs
            if terminations[i] or truncations[i]:
                np.testing.assert_allclose(infos["final_obs"][i], normalized(raw), rtol=1e-6)
                finals += 1
            else:
                np.testing.assert_allclose(next_obs[i], normalized(raw), rtol=1e-6)
    envs.close()
    assert finals > 0
    assert np.abs(next_obs).max() <= 10.0


def test_episode_statistics_record_raw_rewards_while_training_sees_scaled_ones(ppo):
    envs = ppo.make_envs(ENV_ID, 2, False, "test", 0.99)
    envs.reset(seed=0)
    episodes, scaled = [], []
    rng = np.random.default_rng(0)
    for _ in range(100):
        _, reward, _, _, infos = envs.step(rng.uniform(-3, 3, (2, 1)).astype(np.float32))
        scaled.extend(reward)
        if "episode" in infos:
            episodes += [
                (infos["episode"]["r"][i], infos["episode"]["l"][i]) for i in np.flatnonzero(infos["_episode"])
            ]
    envs.close()
    assert episodes
    # InvertedPendulum pays 1 per step but 0 on the step that terminates
    assert all(r in (length, length - 1) for r, length in episodes)
    assert np.max(np.abs(scaled)) <= 10.0 and not np.allclose(scaled, np.round(scaled))


def test_checkpoint_holds_the_statistics_and_resume_continues_them(ppo, trained, tmp_path):
    cwd, path = trained
    shutil.copytree(cwd, tmp_path, dirs_exist_ok=True)  # the resumed run rewrites its checkpoint
    cwd, path = str(tmp_path), os.path.join(tmp_path, os.path.relpath(path, cwd))
    first = torch.load(path, weights_only=True)
    obs_state, return_state = first["obs_rms"], first["return_rms"]
    assert obs_state["mean"].shape == (4,) and obs_state["var"].shape == (4,) and return_state["mean"].shape == ()
    # 128 steps over both envs: every obs and every return updated the one statistic of each
    assert obs_state["count"] > 128 and return_state["count"] == pytest.approx(1e-4 + 128)
    assert (obs_state["var"] != 1).all() and return_state["var"] != 1
    run_script(SCRIPT, [*TINY, "--num-envs", "2", "--total-timesteps", "256", "--save-model", "--resume", path], cwd)
    resumed = torch.load(path, weights_only=True)
    # the resumed run went on counting from the checkpoint's statistics, not from scratch
    assert resumed["return_rms"]["count"] == pytest.approx(1e-4 + 256)
    assert resumed["obs_rms"]["count"] > obs_state["count"] + 128


class NoWriter:
    def add_scalar(self, *args):
        pass


def test_evaluation_leaves_the_statistics_frozen(ppo, trained, raw_steps):
    _, path = trained
    agent, obs_rms = load_trained(ppo, path)
    before = obs_rms.mean.copy(), obs_rms.var.copy(), obs_rms.count
    args = ppo.Args(env_id=ENV_ID, eval_episodes=3, seed=1, eval_deterministic=True)
    first = ppo.evaluate(agent, args, NoWriter(), "cpu", obs_rms)
    second = ppo.evaluate(agent, args, NoWriter(), "cpu", obs_rms)
    assert len(raw_steps) > 6  # it did play
    np.testing.assert_array_equal(obs_rms.mean, before[0])
    np.testing.assert_array_equal(obs_rms.var, before[1])
    assert obs_rms.count == before[2]
    assert first == second
    assert all(float(r).is_integer() for r in first)  # the raw return: InvertedPendulum pays whole numbers


def test_checkpoint_evaluated_in_a_fresh_process_scores_as_at_the_end_of_training(ppo, tmp_path, monkeypatch):
    # HalfCheetah: a 1000-step episode whose return is a float, so any change of action shows
    args = ["--env-id", "HalfCheetah-v5", "--num-steps", "64", "--num-minibatches", "4", "--total-timesteps", "128"]
    args += ["--eval-episodes", "1", "--eval-deterministic"]
    (tmp_path / "train").mkdir(), (tmp_path / "eval").mkdir()
    run_script(SCRIPT, [*args, "--save-model"], tmp_path / "train")
    (train_dir,) = run_dirs(tmp_path / "train")
    path = os.path.join(train_dir, "ppo_continuous.pt")
    eval_args = [
        "--env-id",
        "HalfCheetah-v5",
        "--eval-episodes",
        "1",
        "--eval-deterministic",
        "--eval-checkpoint",
        path,
    ]
    run_script(SCRIPT, eval_args, tmp_path / "eval")
    (eval_dir,) = run_dirs(tmp_path / "eval")
    at_training_end = scalars(train_dir)["eval/episodic_return"]
    assert scalars(eval_dir)["eval/episodic_return"] == at_training_end
    # the test has teeth: the same weights without the saved statistics score differently
    monkeypatch.chdir(tmp_path)  # MuJoCo logs HalfCheetah's deprecation warning to ./MUJOCO_LOG.TXT
    checkpoint = torch.load(path, weights_only=True)
    agent = ppo.Agent(17, 6)
    agent.load_state_dict(checkpoint["model"])
    args = ppo.Args(env_id="HalfCheetah-v5", eval_episodes=1, seed=1, eval_deterministic=True)
    (unnormalized,) = ppo.evaluate(agent, args, NoWriter(), "cpu", RunningMeanStd(shape=(17,)))
    assert unnormalized != pytest.approx(at_training_end[0][1], abs=1e-3)


# ---- errors ----
def test_a_discrete_env_is_refused_naming_ppo_discrete(tmp_path):
    proc = run_script(SCRIPT, ["--env-id", "CartPole-v1"], tmp_path, check=False)
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and "discrete actions" in message and "ppo_discrete.py" in message
    assert os.listdir(tmp_path) == []


def test_missing_mujoco_names_the_package_to_install(tmp_path):
    path = str(ROOT / SCRIPT)
    code = (
        "import runpy, sys; sys.modules['mujoco'] = None; "  # import mujoco now fails as if not installed
        f"sys.argv = [{path!r}, '--env-id', 'HalfCheetah-v5']; runpy.run_path({path!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert message.startswith(f"{SCRIPT}: error: ") and 'pip install "gymnasium[mujoco]"' in message
    assert os.listdir(tmp_path) == []


# ---- learning ----
@pytest.mark.learning
@pytest.mark.parametrize("script", [SCRIPT, "ppo_penalty_continuous.py"])
def test_default_algorithm_balances_the_inverted_pendulum(script, tmp_path):
    """Defaults but the env: a deterministic return of 1000 (the time limit) after about 30k steps
    for seeds 1-3 here, with either objective; the test asks for ≥ 900 after 40960 steps (under a minute)."""
    args = ["--env-id", ENV_ID, "--total-timesteps", "40960", "--eval-episodes", "10", "--eval-deterministic"]
    run_script(script, [*args, "--seed", "1"], tmp_path, timeout=600)
    (run_dir,) = run_dirs(tmp_path)
    logged = scalars(run_dir)
    returns = [value for _, value in logged["eval/episodic_return"]]
    assert len(returns) == 10
    assert np.mean(returns) >= 900, f"eval return {np.mean(returns):.1f} < 900"
    assert np.mean([value for _, value in logged["charts/episodic_return"][:10]]) < 100  # it did learn


def test_bad_input_on_the_default_mujoco_env_is_one_line_and_writes_no_mujoco_log(tmp_path):
    proc = run_script(SCRIPT, ["--env-id", "HalfCheetah-v5", "--resume", "missing.pt"], tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"{SCRIPT}: error: checkpoint 'missing.pt' does not exist; pass a .pt file written by {SCRIPT} --save-model"
    ]
    assert os.listdir(tmp_path) == []  # no runs/, no MUJOCO_LOG.TXT
