"""The KL-penalty objective of ppo_penalty.py and ppo_penalty_continuous.py (PPO paper, section 4): the exact
categorical and diagonal-Gaussian KL, the loss, the adaptive β, and what the runs log and checkpoint."""

import math
import signal

import pytest
import torch
import tyro
from conftest import load_script, problem, run_dirs, run_script, scalars

# script -> the arguments of a run of 8 iterations of 64 steps
PENALTY = {
    "ppo_penalty.py": ["--env-id", "CartPole-v1", "--num-envs", "2", "--num-steps", "32"],
    "ppo_penalty_continuous.py": ["--env-id", "InvertedPendulum-v5", "--num-steps", "64", "--num-minibatches", "4"],
}
D_TARG = 0.01
discrete, continuous = load_script("ppo_penalty.py"), load_script("ppo_penalty_continuous.py")


@pytest.fixture(params=sorted(PENALTY))
def ppo(request):
    return load_script(request.param)


@pytest.mark.parametrize(
    "kl, expected",
    [
        (0.0, 0.5),  # far below: halve
        (D_TARG / 1.5 * 0.999, 0.5),  # just below d_targ/1.5: halve
        (D_TARG / 1.5, 1.0),  # exactly d_targ/1.5: the paper's "d < d_targ/1.5" is strict, keep
        (D_TARG, 1.0),  # between: keep
        (D_TARG * 1.5, 1.0),  # exactly 1.5·d_targ: "d > 1.5·d_targ" is strict, keep
        (D_TARG * 1.5 * 1.001, 2.0),  # just above: double
        (1.0, 2.0),  # far above: double
    ],
)
def test_kl_coef_update_at_and_around_the_boundaries(ppo, kl, expected):
    assert ppo.update_kl_coef(1.0, kl, D_TARG) == expected
    assert ppo.update_kl_coef(3.0, kl, D_TARG) == 3.0 * expected


def test_categorical_kl_is_the_exact_kl():
    old, new = torch.randn(6, 4), torch.randn(6, 4)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=old), torch.distributions.Categorical(logits=new)
    )
    kl = discrete.categorical_kl(old.log_softmax(-1), new.log_softmax(-1))
    torch.testing.assert_close(kl, expected)
    assert (discrete.categorical_kl(old.log_softmax(-1), old.log_softmax(-1)).abs() < 1e-6).all()


def test_penalty_loss_is_surrogate_minus_beta_kl(ppo):
    advantages = torch.tensor([1.0, -2.0, 0.5])
    kl = torch.tensor([0.1, 0.0, 0.3])
    ratio = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    loss = ppo.policy_loss(advantages, ratio, kl, kl_coef=2.0)
    torch.testing.assert_close(loss, -(advantages - 2.0 * kl).mean())
    loss.backward()
    # no clipping: the surrogate's gradient is -Â/B everywhere, also far outside 1 ± ε
    torch.testing.assert_close(ratio.grad, -advantages / 3)
    far = torch.tensor([5.0], requires_grad=True)
    ppo.policy_loss(torch.tensor([1.0]), far, torch.zeros(1), kl_coef=1.0).backward()
    assert far.grad.item() == -1.0


def test_at_beta_zero_the_loss_is_the_unclipped_surrogate(ppo):
    advantages, kl = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.1, 0.0, 0.3])
    ratio = torch.tensor([3.0, 0.2, 1.0], requires_grad=True)  # far outside 1 ± ε
    loss = ppo.policy_loss(advantages, ratio, kl, kl_coef=0.0)
    torch.testing.assert_close(loss, -(ratio * advantages).mean())
    loss.backward()
    torch.testing.assert_close(ratio.grad, -advantages / 3)


def test_penalty_arguments_that_would_do_nothing_are_refused(ppo):
    assert "start it above 0" in problem(ppo, ["--kl-coef", "0"])
    assert problem(ppo, ["--kl-coef", "0", "--no-adaptive-kl"]) is None  # a fixed β of 0 is plain PG
    assert "--kl-target does nothing" in problem(ppo, ["--no-adaptive-kl", "--kl-target", "0.02"])
    # given is given, also at its default value
    assert "--kl-target does nothing" in problem(ppo, ["--no-adaptive-kl", "--kl-target", "0.01"])


def test_kl_term_pulls_the_policy_back_to_the_old_one():
    old_logp = torch.tensor([[0.2, 0.8]]).log()
    logits = torch.tensor([[0.0, 0.0]], requires_grad=True)
    kl = discrete.categorical_kl(old_logp, logits.log_softmax(-1))
    discrete.policy_loss(torch.zeros(1), torch.ones(1), kl, kl_coef=1.0).backward()
    assert logits.grad[0, 1] < 0 < logits.grad[0, 0]  # descending moves towards p_old = (0.2, 0.8)


@pytest.mark.parametrize("script", sorted(PENALTY))
def test_logs_kl_and_beta_and_checkpoints_beta(script, tmp_path):
    tiny = [*PENALTY[script], "--total-timesteps", "512", "--eval-episodes", "0"]
    run_script(script, [*tiny, "--kl-target", "1e-9", "--save-model"], tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    logged = scalars(run_dir)
    betas = [value for _, value in logged["losses/kl_coef"]]
    kls = [value for _, value in logged["losses/kl"]]
    assert len(betas) == 8 and all(kl > 0 for kl in kls)
    # d > 1.5·d_targ after every update: β doubles each iteration, starting at β₀ = 1
    assert betas == [2.0**k for k in range(8)]
    checkpoint = torch.load(f"{run_dir}/{script[:-3]}.pt", weights_only=True)
    assert checkpoint["kl_coef"] == 2.0**8
    (tmp_path / "resumed").mkdir()
    resume = ["--resume", f"{run_dir}/{script[:-3]}.pt", "--total-timesteps", "640", "--kl-target", "1e-9"]
    run_script(script, [*tiny[:2], *resume, "--eval-episodes", "0"], tmp_path / "resumed")
    assert scalars(run_dir)["losses/kl_coef"][8][1] == 2.0**8  # β continues, not reset to β₀

    (tmp_path / "fixed").mkdir()
    run_script(script, [*tiny, "--no-adaptive-kl", "--kl-coef", "3"], tmp_path / "fixed")
    (run_dir,) = run_dirs(tmp_path / "fixed")
    assert {value for _, value in scalars(run_dir)["losses/kl_coef"]} == {3.0}


# ---- diagonal Gaussian (ppo_penalty_continuous.py) ----
@pytest.mark.parametrize("script", sorted(PENALTY))
def test_pi_old_is_the_rollout_policy_so_each_iterations_first_kl_is_zero(script, tmp_path, monkeypatch):
    """π_old(·|s) comes from the rollout's weights and the observations the update sees, so before an iteration's
    first optimizer step KL[π_old, π_θ] is 0 on every state: exactly 0 here, and the KL is quadratic in the policy's
    difference, so rounding of ~1e-6 in logits or means (another machine, another batch size) stays near 1e-12.
    Computed from observations scaled by 1.01, π_old is already about 1e-7 off; from an earlier iteration, about d."""
    ppo = load_script(script)
    name = "categorical_kl" if script == "ppo_penalty.py" else "gaussian_kl"
    exact_kl, largest = getattr(ppo, name), []

    def spy(*args):
        kl = exact_kl(*args)
        largest.append(kl.detach().abs().max().item())
        return kl

    monkeypatch.setattr(ppo, name, spy)
    monkeypatch.chdir(tmp_path)
    args = tyro.cli(ppo.Args, args=[*PENALTY[script], "--total-timesteps", "256", "--eval-episodes", "0"])
    # main installs its signal handlers and sets torch's threads: both are restored for the next tests
    handlers, num_threads = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}, torch.get_num_threads()
    try:
        ppo.main(args)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        torch.set_num_threads(num_threads)
    per_iteration = args.update_epochs * args.num_minibatches + 1  # the minibatches, then d on the whole batch
    assert len(largest) == 4 * per_iteration
    firsts = largest[::per_iteration]
    assert max(firsts) < 1e-9, firsts
    assert max(largest) > 1e-5  # the later minibatches do move the policy (to about 2e-4 and 5e-2 here)


def gaussians(batch=5, action_dim=3):
    """Two batches of diagonal Gaussians that differ in mean and in std, per state and per dimension."""
    generator = torch.Generator().manual_seed(0)
    old_mean, new_mean = torch.randn(2, batch, action_dim, generator=generator)
    old_logstd, new_logstd = 0.5 * torch.randn(2, batch, action_dim, generator=generator)
    return old_mean, old_logstd, new_mean, new_logstd


def normal(mean, logstd):
    return torch.distributions.Independent(torch.distributions.Normal(mean, logstd.exp()), 1)


def test_gaussian_kl_is_torch_distributions_kl_of_the_diagonal_gaussians():
    old_mean, old_logstd, new_mean, new_logstd = gaussians()
    kl = continuous.gaussian_kl(old_mean, old_logstd, new_mean, new_logstd)
    expected = torch.distributions.kl_divergence(normal(old_mean, old_logstd), normal(new_mean, new_logstd))
    assert kl.shape == (5,) and (kl > 0.1).all()  # summed over the action dimensions, far from 0
    torch.testing.assert_close(kl, expected)
    # KL[π, π] = 0, and KL is not symmetric: the order is KL[π_old, π_θ] as in the paper
    torch.testing.assert_close(continuous.gaussian_kl(old_mean, old_logstd, old_mean, old_logstd), torch.zeros(5))
    reverse = continuous.gaussian_kl(new_mean, new_logstd, old_mean, old_logstd)
    assert ((reverse - kl).abs() > 1e-3).any()


def test_gaussian_kl_matches_a_monte_carlo_estimate():
    old_mean, old_logstd, new_mean, new_logstd = gaussians()
    old, new = normal(old_mean, old_logstd), normal(new_mean, new_logstd)
    torch.manual_seed(1)
    samples = old.sample((200_000,))  # (S, B, action_dim) from π_old
    log_ratio = old.log_prob(samples) - new.log_prob(samples)  # (S, B), E_old[log_ratio] = KL
    standard_error = log_ratio.std(0) / math.sqrt(len(samples))
    kl = continuous.gaussian_kl(old_mean, old_logstd, new_mean, new_logstd)
    # 5 standard errors: a false failure has probability below 1e-6 per state
    assert ((log_ratio.mean(0) - kl).abs() < 5 * standard_error).all(), (log_ratio.mean(0), kl, standard_error)


def test_agent_policy_is_the_gaussian_the_actions_are_drawn_and_scored_from():
    torch.manual_seed(0)
    agent = continuous.Agent(4, 2)
    with torch.no_grad():
        agent.actor_logstd.copy_(torch.tensor([[-0.7, 0.4]]))
    x, actions = torch.randn(6, 4), torch.randn(6, 2)
    mean, logstd = agent.get_policy(x)
    assert mean.shape == logstd.shape == (6, 2)
    _, logprob, entropy, _ = agent.get_action_and_value(x, actions)
    torch.testing.assert_close(logprob, normal(mean, logstd).log_prob(actions))
    torch.testing.assert_close(entropy, normal(mean, logstd).entropy())
    torch.testing.assert_close(agent.get_action_and_value(x, deterministic=True)[0], mean)


def test_gaussian_kl_term_pulls_the_policy_back_to_the_old_one():
    old_mean, old_logstd = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 0.0]])
    new_mean, new_logstd = torch.zeros(1, 2, requires_grad=True), torch.full((1, 2), 0.5, requires_grad=True)
    kl = continuous.gaussian_kl(old_mean, old_logstd, new_mean, new_logstd)
    continuous.policy_loss(torch.zeros(1), torch.ones(1), kl, kl_coef=1.0).backward()
    assert new_mean.grad[0, 0] < 0 < new_mean.grad[0, 1]  # descending moves the mean towards (1, -1)
    assert (new_logstd.grad > 0).all()  # and the std back down towards 1
