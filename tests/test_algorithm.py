"""Unit tests of the pure functions of section "algorithm" and of the network, for every script."""

import copy
import math

import numpy as np
import pytest
import torch
from conftest import SCRIPTS, load_script

CLIPPED = sorted(name for name in SCRIPTS if name != "ppo_penalty.py")


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

    # the scripts' convention: the truncation bootstrap is folded into the reward, and
    # dones[t] = "obs[t] starts an episode" = the step before it ended one
    ended = terminations | truncations
    folded = rewards + gamma * final_values * truncations
    dones = np.zeros_like(rewards)
    dones[1:] = ended[:-1]
    as_t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    advantages, returns = ppo.compute_gae(
        as_t(folded), as_t(values), as_t(dones), as_t(next_value).reshape(1, -1), as_t(ended[-1]), gamma, gae_lambda
    )
    assert advantages.shape == (num_steps, num_envs)
    np.testing.assert_allclose(advantages.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns.numpy(), expected + values, rtol=1e-5, atol=1e-5)


def test_gae_closed_form_single_reward_at_the_end(ppo):
    """One episode that pays 1 when it terminates, V = 0: Â_t = (γλ)^(T-1-t), and at λ=1 the
    return is γ^(T-1-t), the discounted reward."""
    num_steps, gamma = 10, 0.9
    rewards = torch.zeros(num_steps, 1)
    rewards[-1] = 1.0
    values, dones = torch.zeros(num_steps, 1), torch.zeros(num_steps, 1)
    next_value, next_done = torch.full((1, 1), 123.0), torch.ones(1)  # terminal: 123 must not leak in
    for gae_lambda in (0.95, 1.0):
        advantages, returns = ppo.compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda)
        expected = torch.tensor([(gamma * gae_lambda) ** (num_steps - 1 - t) for t in range(num_steps)])
        torch.testing.assert_close(advantages[:, 0], expected)
    torch.testing.assert_close(returns[:, 0], torch.tensor([gamma ** (num_steps - 1 - t) for t in range(num_steps)]))


def test_gae_bootstraps_from_next_value_when_not_done(ppo):
    gamma, gae_lambda = 0.5, 1.0
    rewards, values, dones = torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1)
    advantages, _ = ppo.compute_gae(rewards, values, dones, torch.full((1, 1), 8.0), torch.zeros(1), gamma, gae_lambda)
    torch.testing.assert_close(advantages[:, 0], torch.tensor([2.0, 4.0]))


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


def test_kl_estimators_agree_with_the_exact_kl(ppo):
    torch.manual_seed(0)
    p_old = torch.distributions.Categorical(logits=torch.tensor([0.0, 1.0, -1.0]))
    p_new = torch.distributions.Categorical(logits=torch.tensor([0.3, 0.8, -0.5]))
    actions = p_old.sample((200000,))
    logratio = p_new.log_prob(actions) - p_old.log_prob(actions)
    old_approx_kl, approx_kl = ppo.approx_kl(logratio)
    exact = torch.distributions.kl_divergence(p_old, p_new)
    assert approx_kl.item() == pytest.approx(exact.item(), rel=0.05)
    assert old_approx_kl.item() == pytest.approx(exact.item(), rel=0.05)
    # at ratio 1 both vanish; the (r-1)-log r estimator is never negative
    assert ppo.approx_kl(torch.zeros(5))[1].item() == 0.0
    assert (((logratio.exp() - 1) - logratio) >= 0).all()


def test_flatten_parameters_makes_weights_and_grads_views_of_two_vectors(ppo):
    """Weights and .grad become views of flat vectors; backward() fills the flat gradient, a write to the
    flat vector changes the module, and load_state_dict writes into it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    reference = copy.deepcopy(model)
    x = torch.randn(16, 4)
    flat_params, flat_grad = ppo.flatten_parameters(model)
    assert flat_params.shape == flat_grad.shape == (4 * 8 + 8 + 8 * 2 + 2,)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)  # same weights after the move
    for _ in range(2):  # the zeroed flat gradient receives exactly one backward pass's gradients
        flat_grad.zero_()
        reference.zero_grad()
        for net in (model, reference):
            net(x).square().mean().backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    assert torch.equal(flat_grad, expected) and flat_grad.abs().sum() > 0
    flat_params.add_(1.0)
    assert torch.equal(model[0].bias, reference[0].bias.detach() + 1.0)
    model.load_state_dict(reference.state_dict())
    assert torch.equal(flat_params, torch.cat([p.detach().reshape(-1) for p in reference.parameters()]))


def test_flatten_parameters_keeps_a_channels_last_layout(ppo):
    """ppo_atari.py's convolutions are channels_last: their weights and grads stay so, with the same values."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    reference = copy.deepcopy(conv)
    flat_params, flat_grad = ppo.flatten_parameters(conv)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert conv.weight.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(conv.weight, reference.weight) and torch.equal(conv.bias, reference.bias)
    x = torch.randn(2, 4, 9, 9)
    for net in (conv, reference):
        net(x).square().sum().backward()
    assert torch.equal(conv.weight.grad, reference.weight.grad) and flat_grad.abs().sum() > 0


@pytest.mark.parametrize("max_norm", [0.05, 100.0])
def test_clip_grad_norm_matches_torch(ppo, max_norm):
    """Clips (max_norm below the norm) or leaves alone (above it) as clip_grad_norm_ does. The norm of
    the flat gradient sums the squares in another order than clip_grad_norm_'s norm of per-tensor norms,
    so the two may differ in the last bits."""
    torch.manual_seed(0)
    reference = [torch.nn.Parameter(torch.randn(shape)) for shape in [(64, 4), (64,), (2, 64)]]
    for r in reference:
        r.grad = torch.randn_like(r)
    grad = torch.cat([r.grad.reshape(-1) for r in reference])
    expected = grad.clone()
    torch.nn.utils.clip_grad_norm_(reference, max_norm)
    ppo.clip_grad_norm(grad, max_norm)
    torch.testing.assert_close(grad, torch.cat([r.grad.reshape(-1) for r in reference]), rtol=1e-6, atol=0)
    if max_norm < 1.0:
        assert torch.linalg.vector_norm(grad).item() == pytest.approx(max_norm, rel=1e-5)
    else:
        assert torch.equal(grad, expected)


def test_adam_step_matches_torch_optim_adam(ppo):
    """Five steps with an annealed learning rate on the flat parameters give bit-identical weights to
    torch.optim.Adam on the module's own parameters."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    reference, initial = copy.deepcopy(model), copy.deepcopy(model)
    optimizer = torch.optim.Adam(reference.parameters(), lr=2.5e-4, eps=1e-5)
    flat_params, flat_grad = ppo.flatten_parameters(model)
    state = {"step": 0, "exp_avg": torch.zeros_like(flat_params), "exp_avg_sq": torch.zeros_like(flat_params)}
    for step in range(5):
        x, lr = torch.randn(16, 4), 2.5e-4 * (1 - step / 5)
        flat_grad.zero_()
        reference.zero_grad()
        for net in (model, reference):
            net(x).square().mean().backward()
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
        ppo.adam_step(flat_params, flat_grad, state, lr, eps=1e-5)
    assert state["step"] == 5
    for p, r, p0 in zip(model.parameters(), reference.parameters(), initial.parameters(), strict=True):
        assert torch.equal(p, r)
        assert not torch.equal(p, p0)


def test_explained_variance(ppo):
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert ppo.explained_variance(y, y) == 1.0
    assert ppo.explained_variance(np.full(4, y.mean()), y) == 0.0
    assert math.isnan(ppo.explained_variance(y, np.ones(4)))


def test_layer_init_is_orthogonal_with_the_gain_and_zero_bias(ppo):
    torch.manual_seed(0)
    for gain in (math.sqrt(2), 1.0, 0.01):
        layer = ppo.layer_init(torch.nn.Linear(64, 8), std=gain)
        w = layer.weight.detach()
        torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(8), atol=1e-5, rtol=1e-4)
        assert (layer.bias == 0).all()


MLP_CATEGORICAL = sorted(name for name in SCRIPTS if name in ("ppo_discrete.py", "ppo_penalty.py"))
POLICY_MLP = {"ppo_discrete.py": "actor", "ppo_penalty.py": "actor", "ppo_continuous.py": "actor_mean"}


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
    # the rollout's get_action: the same log-probability, and log π(·|x) of every action
    _, rollout_logprob, logp = agent.get_action(x, actions)
    torch.testing.assert_close(rollout_logprob, logprob)
    torch.testing.assert_close(logp, reference.logits)
    # the Gumbel-max draw follows the policy's probabilities
    x1 = x[:1].expand(20000, -1)
    sampled, logprob, _, _ = agent.get_action_and_value(x1)
    frequencies = torch.bincount(sampled, minlength=3).float() / len(sampled)
    torch.testing.assert_close(frequencies, reference.probs[0].detach(), atol=0.015, rtol=0)
    torch.testing.assert_close(logprob, reference.probs[0].log()[sampled])


def test_checkpoint_rng_round_trip_continues_every_stream(ppo, tmp_path):
    """save_checkpoint → weights-only load → restore_rng continues python, numpy and torch exactly."""
    import random

    model = torch.nn.Linear(2, 2)
    adam_state = {"step": 0, "exp_avg": torch.zeros(6), "exp_avg_sq": torch.zeros(6)}
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian and a position inside the key block
    ppo.save_checkpoint(str(tmp_path / "c.pt"), model, adam_state, ppo.Args(), 1, 2)
    expected = (random.random(), np.random.rand(3), np.random.randn(), torch.rand(3))
    ppo.restore_rng(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    assert random.random() == expected[0]
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert np.random.randn() == expected[2]
    torch.testing.assert_close(torch.rand(3), expected[3])
