"""Unit tests of the pure functions of section "algorithm" and of the network, for every script."""

import math

import numpy as np
import pytest
import torch
from conftest import SCRIPTS, load_script

CLIPPED = sorted(name for name in SCRIPTS if "penalty" not in name)


@pytest.fixture
def ppo(script):
    return load_script(script)


def naive_gae(rewards, values, terminations, truncations, final_values, next_value, gamma, gae_lambda):
    """GAE from its definition, one env and one episode at a time.

    Step t moves obs[t] -> next state. If the episode ended at t (terminated or truncated), the next
    state is the episode's final obs: worth 0 if terminated, final_values[t] if truncated; otherwise
    it is obs[t + 1] (or the obs after the rollout). Â_t = Σ_l (γλ)^l δ_t+l within the episode.
    """
    num_steps, num_envs = rewards.shape
    advantages = np.zeros((num_steps, num_envs))
    for env in range(num_envs):
        deltas = []
        for t in range(num_steps):
            if terminations[t, env]:
                v_next = 0.0
            elif truncations[t, env]:
                v_next = final_values[t, env]
            else:
                v_next = values[t + 1, env] if t + 1 < num_steps else next_value[env]
            deltas.append(rewards[t, env] + gamma * v_next - values[t, env])
        for t in range(num_steps):
            total, discount = 0.0, 1.0
            for k in range(t, num_steps):
                total += discount * deltas[k]
                if terminations[k, env] or truncations[k, env]:
                    break
                discount *= gamma * gae_lambda
            advantages[t, env] = total
    return advantages


def test_gae_matches_naive_loop_with_terminations_and_truncations(ppo):
    rng = np.random.default_rng(0)
    num_steps, num_envs, gamma, gae_lambda = 40, 3, 0.97, 0.9
    rewards = rng.normal(size=(num_steps, num_envs))
    values = rng.normal(size=(num_steps, num_envs))
    final_values = rng.normal(size=(num_steps, num_envs))
    next_value = rng.normal(size=num_envs)
    terminations = rng.random((num_steps, num_envs)) < 0.1
    terminations[-1, :] = [True, False, False]  # boundaries on the last step too
    truncations = ~terminations & (rng.random((num_steps, num_envs)) < 0.1)
    truncations[-1, :] = [False, True, False]
    expected = naive_gae(rewards, values, terminations, truncations, final_values, next_value, gamma, gae_lambda)

    # the scripts' convention: the rewards as the env gave them, V(final obs) of the truncated steps passed
    # explicitly (0 elsewhere), and dones[t] = "obs[t] starts an episode" = the step before it ended one
    ended = terminations | truncations
    dones = np.zeros_like(rewards)
    dones[1:] = ended[:-1]
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731  (the rollout storage's dtype)
    advantages, returns = ppo.compute_gae(
        f32(rewards), f32(values), f32(dones), f32(final_values * truncations), f32(next_value), f32(ended[-1]),
        gamma, gae_lambda,
    )  # fmt: skip
    assert advantages.shape == (num_steps, num_envs)
    # float32 sums of up to 40 terms of magnitude ~1: 1e-5 is a few float32 ulps of the result
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, expected + values, rtol=1e-5, atol=1e-5)


def test_gae_closed_form_single_reward_at_the_end(ppo):
    """One episode that pays 1 when it terminates, V = 0: Â_t = (γλ)^(T-1-t), and at λ=1 the
    return is γ^(T-1-t), the discounted reward."""
    num_steps, gamma = 10, 0.9
    rewards = np.zeros((num_steps, 1), dtype=np.float32)
    rewards[-1] = 1.0
    values, dones = np.zeros((num_steps, 1), dtype=np.float32), np.zeros((num_steps, 1), dtype=np.float32)
    next_value, next_done = np.full(1, 123.0, dtype=np.float32), np.ones(1, dtype=np.float32)  # 123 must not leak in
    for gae_lambda in (0.95, 1.0):
        advantages, returns = ppo.compute_gae(
            rewards, values, dones, values * 0, next_value, next_done, gamma, gae_lambda
        )
        expected = [(gamma * gae_lambda) ** (num_steps - 1 - t) for t in range(num_steps)]
        np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-6)  # float32 products of ≤ 10 factors
    np.testing.assert_allclose(returns[:, 0], [gamma ** (num_steps - 1 - t) for t in range(num_steps)], rtol=1e-6)


def test_gae_bootstraps_from_next_value_when_not_done(ppo):
    gamma, gae_lambda = 0.5, 1.0
    rewards, values, dones = np.zeros((2, 1)), np.zeros((2, 1)), np.zeros((2, 1))
    advantages, _ = ppo.compute_gae(rewards, values, dones, values, np.full(1, 8.0), np.zeros(1), gamma, gae_lambda)
    np.testing.assert_array_equal(advantages[:, 0], [2.0, 4.0])  # exact: powers of two


@pytest.mark.parametrize("script", CLIPPED)
def test_policy_loss_at_ratio_one_is_minus_mean_advantage(ppo):
    advantages = torch.tensor([1.0, -2.0, 0.5, 3.0])
    loss = ppo.policy_loss(advantages, torch.ones(4), clip_coef=0.2)
    torch.testing.assert_close(loss, -advantages.mean())


@pytest.mark.parametrize("script", CLIPPED)
@pytest.mark.parametrize(
    "ratio, advantage, clipped",
    [
        (1.5, 1.0, True),  # above 1+ε with Â>0: no incentive to go higher
        (0.5, -1.0, True),  # below 1-ε with Â<0: no incentive to go lower
        (1.5, -1.0, False),  # above 1+ε but Â<0: the pessimistic bound still pulls it back
        (0.5, 1.0, False),  # below 1-ε but Â>0: pulled back up
        (1.1, 1.0, False),  # inside 1±ε: plain policy gradient
        (0.9, -1.0, False),
    ],
)
def test_policy_loss_gradient_vanishes_only_outside_the_clip_range_in_the_advantage_direction(
    ppo, ratio, advantage, clipped
):
    r = torch.tensor([ratio], requires_grad=True)
    ppo.policy_loss(torch.tensor([advantage]), r, clip_coef=0.2).backward()
    if clipped:
        assert r.grad.item() == 0.0
    else:
        assert r.grad.item() == pytest.approx(-advantage)  # d(-r·Â)/dr


def test_value_loss_unclipped_is_half_mse(ppo):
    new, old, ret = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 4.0])
    loss = ppo.value_loss(new, old, ret, clip_coef=0.2, clip_vloss=False)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (1.0 + 4.0) / 2))


def test_value_loss_clipped_takes_the_pessimistic_error(ppo):
    old, eps = torch.tensor([0.0, 0.0, 0.0]), 0.2
    # moved past the target: unclipped error 0, clipped error (0.2-0.5)^2; max picks the clipped one
    # moved away from the target: both errors equal the unclipped one (1.0-(-1))^2 vs (-0.2-(-1))^2
    # inside the range: the clip does nothing
    new = torch.tensor([0.5, 1.0, 0.1], requires_grad=True)
    ret = torch.tensor([0.5, -1.0, 0.3])
    loss = ppo.value_loss(new, old, ret, clip_coef=eps, clip_vloss=True)
    expected = 0.5 * torch.tensor([(0.2 - 0.5) ** 2, (1.0 + 1.0) ** 2, (0.1 - 0.3) ** 2]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert new.grad[0].item() == 0.0  # the clipped term wins: no gradient through the new value
    assert new.grad[1].item() != 0.0 and new.grad[2].item() != 0.0


def test_layer_init_is_orthogonal_with_the_gain_and_zero_bias(ppo):
    torch.manual_seed(0)
    for gain in (math.sqrt(2), 1.0, 0.01):
        layer = ppo.layer_init(torch.nn.Linear(64, 8), std=gain)
        w = layer.weight.detach()
        torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(8), atol=1e-5, rtol=1e-4)
        assert (layer.bias == 0).all()


MLP_CATEGORICAL = sorted(name for name in SCRIPTS if name in ("ppo_discrete.py", "ppo_penalty.py"))
POLICY_MLP = {"ppo_discrete.py": "actor", "ppo_penalty.py": "actor", "ppo_continuous.py": "actor_mean"}
POLICY_MLP["ppo_penalty_continuous.py"] = "actor_mean"


@pytest.mark.parametrize("script", sorted(set(POLICY_MLP) & set(SCRIPTS)))
def test_mlp_agent_init_gains(ppo, script):
    """64-64 tanh MLPs, orthogonal init: gain √2 on hidden layers, 0.01 on the policy head, 1 on the value head."""
    torch.manual_seed(0)
    agent = ppo.Agent(8, 3)
    gains = {POLICY_MLP[script]: [math.sqrt(2), math.sqrt(2), 0.01], "critic": [math.sqrt(2), math.sqrt(2), 1.0]}
    for net, expected in gains.items():
        assert all(isinstance(m, (torch.nn.Linear, torch.nn.Tanh)) for m in getattr(agent, net))
        linears = [m for m in getattr(agent, net) if isinstance(m, torch.nn.Linear)]
        assert len(linears) == len(expected) and [layer.out_features for layer in linears[:2]] == [64, 64]
        for layer, gain in zip(linears, expected, strict=True):
            w = layer.weight.detach()
            small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(small, gain**2 * torch.eye(small.shape[0]), atol=1e-5, rtol=1e-4)
            assert (layer.bias == 0).all()


@pytest.mark.parametrize("script", MLP_CATEGORICAL)
def test_agent_categorical_matches_torch_distributions(ppo):
    torch.manual_seed(0)
    agent = ppo.Agent(4, 3)
    with torch.no_grad():  # make the policy far from uniform so the checks have teeth
        agent.actor[-1].weight.mul_(300)
    x = torch.randn(5, 4)
    actions = torch.tensor([0, 1, 2, 1, 0])
    _, logprob, entropy, value = agent.get_action_and_value(x, actions)
    reference = torch.distributions.Categorical(logits=agent.actor(x))
    torch.testing.assert_close(logprob, reference.log_prob(actions))
    torch.testing.assert_close(entropy, reference.entropy())
    torch.testing.assert_close(value, agent.get_value(x))
    # deterministic: the most likely action, whose log-probability is scored as usual
    greedy, greedy_logprob, _, _ = agent.get_action_and_value(x, deterministic=True)
    torch.testing.assert_close(greedy, reference.probs.argmax(-1))
    torch.testing.assert_close(greedy_logprob, reference.log_prob(greedy))
    # the Gumbel-max draw follows the policy's probabilities
    x1 = x[:1].expand(20000, -1)
    sampled, logprob, _, _ = agent.get_action_and_value(x1)
    frequencies = torch.bincount(sampled, minlength=3).float() / len(sampled)
    torch.testing.assert_close(frequencies, reference.probs[0].detach(), atol=0.015, rtol=0)
    torch.testing.assert_close(logprob, reference.probs[0].log()[sampled])


def test_checkpoint_holds_torch_rng_and_optimizer_state_that_continue_exactly(ppo, tmp_path):
    """save_checkpoint → weights-only load → restore continues torch's generator (the one the script draws
    actions and minibatches from) and Adam exactly: the next step gives bit-identical weights."""
    torch.manual_seed(3)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-5, fused=True)
    model(torch.randn(4, 2)).square().sum().backward()
    optimizer.step()
    ppo.save_checkpoint(str(tmp_path / "c.pt"), dict(model=model, optimizer=optimizer), ppo.Args(), 1, 2)
    expected_draw = torch.rand(3)
    x = torch.randn(4, 2)
    optimizer.zero_grad()
    model(x).square().sum().backward()
    optimizer.step()
    checkpoint = torch.load(tmp_path / "c.pt", weights_only=True)
    restored = torch.nn.Linear(2, 2)
    restored.load_state_dict(checkpoint["model"])
    restored_optimizer = torch.optim.Adam(restored.parameters(), lr=1e-3, eps=1e-5, fused=True)
    restored_optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"])
    assert torch.equal(torch.rand(3), expected_draw)
    restored(x).square().sum().backward()
    restored_optimizer.step()
    for p, r in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(p, r)
