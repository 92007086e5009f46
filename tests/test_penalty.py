"""ppo_penalty.py: the KL-penalty objective, the exact KL and the adaptive β (PPO paper, section 4)."""

import pytest
import torch
from conftest import load_script, run_dirs, run_script, scalars

ppo = load_script("ppo_penalty.py")
D_TARG = 0.01


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
def test_kl_coef_update_at_and_around_the_boundaries(kl, expected):
    assert ppo.update_kl_coef(1.0, kl, D_TARG) == expected
    assert ppo.update_kl_coef(3.0, kl, D_TARG) == 3.0 * expected


def test_categorical_kl_is_the_exact_kl():
    old, new = torch.randn(6, 4), torch.randn(6, 4)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=old), torch.distributions.Categorical(logits=new)
    )
    kl = ppo.categorical_kl(old.log_softmax(-1), new.log_softmax(-1))
    torch.testing.assert_close(kl, expected)
    assert (ppo.categorical_kl(old.log_softmax(-1), old.log_softmax(-1)).abs() < 1e-6).all()


def test_penalty_loss_is_surrogate_minus_beta_kl():
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


def test_penalty_arguments_that_would_do_nothing_are_refused():
    from conftest import problem

    assert "start it above 0" in problem(ppo, ["--kl-coef", "0"])
    assert problem(ppo, ["--kl-coef", "0", "--no-adaptive-kl"]) is None  # a fixed β of 0 is plain PG
    assert "--kl-target does nothing" in problem(ppo, ["--no-adaptive-kl", "--kl-target", "0.02"])


def test_kl_term_pulls_the_policy_back_to_the_old_one():
    old_logp = torch.tensor([[0.2, 0.8]]).log()
    logits = torch.tensor([[0.0, 0.0]], requires_grad=True)
    kl = ppo.categorical_kl(old_logp, logits.log_softmax(-1))
    ppo.policy_loss(torch.zeros(1), torch.ones(1), kl, kl_coef=1.0).backward()
    assert logits.grad[0, 1] < 0 < logits.grad[0, 0]  # descending moves towards p_old = (0.2, 0.8)


def test_logs_kl_and_beta_and_checkpoints_beta(tmp_path):
    tiny = ["--num-envs", "2", "--num-steps", "32", "--total-timesteps", "512", "--eval-episodes", "0"]
    run_script("ppo_penalty.py", [*tiny, "--kl-target", "1e-9", "--save-model"], tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    logged = scalars(run_dir)
    betas = [value for _, value in logged["losses/kl_coef"]]
    kls = [value for _, value in logged["losses/kl"]]
    assert len(betas) == 8 and all(kl > 0 for kl in kls)
    # d > 1.5·d_targ after every update: β doubles each iteration, starting at β₀ = 1
    assert betas == [2.0**k for k in range(8)]
    checkpoint = torch.load(f"{run_dir}/ppo_penalty.pt", weights_only=True)
    assert checkpoint["kl_coef"] == 2.0**8
    (tmp_path / "resumed").mkdir()
    resume = ["--resume", f"{run_dir}/ppo_penalty.pt", "--total-timesteps", "640", "--kl-target", "1e-9"]
    run_script("ppo_penalty.py", [*tiny[:4], *resume, "--eval-episodes", "0"], tmp_path / "resumed")
    (resumed_dir,) = run_dirs(tmp_path / "resumed")
    assert scalars(resumed_dir)["losses/kl_coef"][0][1] == 2.0**8  # β continues, not reset to β₀

    (tmp_path / "fixed").mkdir()
    run_script("ppo_penalty.py", [*tiny, "--no-adaptive-kl", "--kl-coef", "3"], tmp_path / "fixed")
    (run_dir,) = run_dirs(tmp_path / "fixed")
    assert {value for _, value in scalars(run_dir)["losses/kl_coef"]} == {3.0}
