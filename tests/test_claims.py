"""Claims of the README that only show inside a run: --eval-checkpoint evaluates the checkpoint's weights, the logged
statistics are the ones their rows define, each switch changes the run in the way it says, and --resume restores
Adam's state and torch's RNG. The scripts run in-process (main(Args) as from the command line) and are observed
from outside, through a wrapped Agent, evaluate or compute_gae, an optimizer hook and what they log and save."""

import copy
import glob
import os
import random
import shutil
import signal
import sys

import numpy as np
import pytest
import torch
import tyro
from conftest import SCRIPTS, load_script, run_dirs, scalars
from torch.optim.optimizer import register_optimizer_step_pre_hook

ALL = sorted(SCRIPTS)
MLP = [name for name in ALL if name != "ppo_atari.py"]  # a run takes a fraction of a second


# one thread (ppo_atari.py's default is 2): on a busy machine two threads that wait on each other take 5x longer
ONE_THREAD = ["--num-threads", "1"]


def tiny(script: str, *extra: str) -> list[str]:
    """The tiny run's arguments without evaluation, then extra (a flag given twice: the last one counts)."""
    return [
        "--env-id",
        SCRIPTS[script]["env_id"],
        *SCRIPTS[script]["tiny"],
        "--eval-episodes",
        "0",
        *ONE_THREAD,
        *extra,
    ]


def one_batch(ppo, script: str) -> str:
    """--total-timesteps of a tiny run of one iteration."""
    args = tyro.cli(ppo.Args, args=tiny(script))
    return str(args.num_envs * args.num_steps)


def run_main(ppo, script: str, argv: list[str], cwd) -> None:
    """Runs ppo.main as `python script *argv` would, in cwd; puts back what main changes for the whole process
    (signal handlers, thread count, the global RNGs, the working directory)."""
    os.makedirs(cwd, exist_ok=True)
    before = os.getcwd(), sys.argv, torch.get_num_threads()
    rngs = torch.get_rng_state(), np.random.get_state(), random.getstate()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    os.chdir(cwd)
    sys.argv = [script, *argv]  # how the script tells a given argument from a default
    try:
        ppo.main(tyro.cli(ppo.Args, args=argv))
    finally:
        os.chdir(before[0])
        sys.argv = before[1]
        torch.set_num_threads(before[2])
        torch.set_rng_state(rngs[0]), np.random.set_state(rngs[1]), random.setstate(rngs[2])
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def run_scalars(ppo, script: str, argv: list[str], cwd) -> dict:
    """The scalars a run in a new folder cwd logs."""
    run_main(ppo, script, argv, cwd)
    (run_dir,) = run_dirs(cwd)
    return scalars(run_dir)


def train(ppo, script: str, argv: list[str], cwd) -> tuple[dict, dict]:
    """A run with --save-model: (its final checkpoint, its logged scalars)."""
    run_main(ppo, script, [*argv, "--save-model"], cwd)
    (run_dir,) = run_dirs(cwd)
    (path,) = glob.glob(os.path.join(run_dir, "*.pt"))
    return torch.load(path, weights_only=True), scalars(run_dir)


def adam_steps(checkpoint: dict) -> int:
    """Optimizer steps taken: Adam counts them per parameter, the same count for all."""
    (steps,) = {int(state["step"]) for state in checkpoint["optimizer"]["state"].values()}
    return steps


def same_weights(a: dict, b: dict, critic: bool | None = None) -> bool:
    """Whether two state dicts hold the same tensors (critic True/False: only the critic's / only the others')."""
    assert a.keys() == b.keys()
    names = [name for name in a if critic is None or name.startswith("critic") == critic]
    assert names
    return all(torch.equal(a[name], b[name]) for name in names)


def last(logged: dict, tag: str) -> float:
    return logged[tag][-1][1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """script -> (folder, checkpoint path) of a one-iteration tiny run with --save-model, trained once per module."""
    cache = {}

    def get(script: str) -> tuple[str, str]:
        if script not in cache:
            cwd = tmp_path_factory.mktemp("trained")
            ppo = load_script(script)
            run_main(ppo, script, tiny(script, "--total-timesteps", one_batch(ppo, script), "--save-model"), cwd)
            (path,) = glob.glob(os.path.join(cwd, "runs", "*", "*.pt"))
            cache[script] = str(cwd), path
        return cache[script]

    return get


# ---- --eval-checkpoint ----
@pytest.mark.parametrize("script", ALL)
def test_eval_checkpoint_evaluates_the_checkpoints_weights(script, trained, tmp_path):
    _, path = trained(script)
    ppo = load_script(script)
    built, evaluated = [], []

    class Observed(ppo.Agent):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append({name: t.detach().clone() for name, t in self.state_dict().items()})

    def observed_evaluate(*args, **kwargs):
        values = [*args, *kwargs.values()]
        (agent,) = [value for value in values if isinstance(value, torch.nn.Module)]
        stats = [value for value in values if all(hasattr(value, a) for a in ("mean", "var", "count"))]
        evaluated.append(({name: t.detach().clone() for name, t in agent.state_dict().items()}, copy.deepcopy(stats)))
        return evaluate(*args, **kwargs)

    evaluate, ppo.Agent, ppo.evaluate = ppo.evaluate, Observed, observed_evaluate
    run_main(ppo, script, ["--eval-checkpoint", path, "--eval-episodes", "1", *ONE_THREAD], tmp_path)
    saved = torch.load(path, weights_only=True)
    ((weights, stats),) = evaluated
    assert same_weights(weights, saved["model"])
    assert not same_weights(built[0], saved["model"])  # the weights came from the file, not from the seed
    if "obs_rms" in saved:  # the continuous scripts: observations normalized by the checkpoint's statistics
        (obs_rms,) = stats
        state = saved["obs_rms"]
        np.testing.assert_array_equal(obs_rms.mean, state["mean"].numpy())
        np.testing.assert_array_equal(obs_rms.var, state["var"].numpy())
        assert obs_rms.count == state["count"] and state["count"] > 1  # a fresh statistic counts 1e-4


# ---- the logged statistics ----
def observe_update(ppo, log_ratios: list, gae: list):
    """Wraps ppo.Agent and ppo.compute_gae: log_ratios gets, for each minibatch of the update, log r = log π_θ(a|s)
    - log π_old(a|s) of its samples (π_old recomputed with the weights of the update's first call, the rollout's);
    gae gets each (advantages, returns) of compute_gae."""
    rollout_agent = {}

    class Observed(ppo.Agent):
        def get_action_and_value(self, *args, **kwargs):  # (x, action), ppo_lstm.py: (x, lstm_state, done, action)
            out = super().get_action_and_value(*args, **kwargs)
            if torch.is_grad_enabled():  # a minibatch of the update (the rollouts call get_action)
                if not rollout_agent:
                    rollout_agent["agent"] = copy.deepcopy(self)
                with torch.no_grad():
                    old = ppo.Agent.get_action_and_value(rollout_agent["agent"], *args, **kwargs)[1]
                    log_ratios.append((out[1] - old).double())
            return out

    def observed_gae(*args, **kwargs):
        advantages, returns = compute_gae(*args, **kwargs)
        gae.append((np.array(advantages, dtype=np.float64), np.array(returns, dtype=np.float64)))
        return advantages, returns

    compute_gae, ppo.Agent, ppo.compute_gae = ppo.compute_gae, Observed, observed_gae


@pytest.mark.parametrize("script", MLP)
def test_kl_estimates_and_clipfrac_are_zero_when_the_only_minibatch_has_ratio_one(script, tmp_path):
    ppo = load_script(script)
    log_ratios, gae = [], []
    observe_update(ppo, log_ratios, gae)
    argv = tiny(script, "--total-timesteps", one_batch(ppo, script), "--update-epochs", "1", "--num-minibatches", "1")
    logged = run_scalars(ppo, script, argv, tmp_path)
    assert len(log_ratios) == 1  # one update, of one minibatch, with the rollout's weights
    # log π is recomputed on another batch shape: |log r| is float32 rounding of log-probabilities below 10 in
    # magnitude, ~1e-6 at most; the estimates are means of log r and of its square
    assert log_ratios[0].abs().max() < 1e-5
    assert abs(last(logged, "losses/old_approx_kl")) < 1e-6
    assert abs(last(logged, "losses/approx_kl")) < 1e-6
    assert last(logged, "losses/clipfrac") == 0


@pytest.mark.parametrize("script", MLP)
def test_logged_statistics_are_the_minibatch_means_of_their_definitions(script, tmp_path):
    ppo = load_script(script)
    log_ratios, gae = [], []
    observe_update(ppo, log_ratios, gae)
    # a learning rate high enough that the policy moves in one update: ratios leave 1 ± ε
    argv = tiny(script, "--total-timesteps", one_batch(ppo, script), "--learning-rate", "0.01")
    logged = run_scalars(ppo, script, argv, tmp_path)
    args = tyro.cli(ppo.Args, args=argv)
    assert len(log_ratios) == args.update_epochs * args.num_minibatches
    ratios = [log_ratio.exp() for log_ratio in log_ratios]
    # README: mean(−log r), mean((r − 1) − log r), the fraction with |r − 1| > ε; each the mean over the minibatches
    expected = {
        "losses/old_approx_kl": np.mean([(-lr).mean().item() for lr in log_ratios]),
        "losses/approx_kl": np.mean([((r - 1) - lr).mean().item() for r, lr in zip(ratios, log_ratios, strict=True)]),
        "losses/clipfrac": np.mean([((r - 1).abs() > args.clip_coef).double().mean().item() for r in ratios]),
    }
    for tag, value in expected.items():
        # π_old here and the rollout's differ by float32 rounding, ~1e-6 in log r: ~1e-6 in the estimates, far
        # below the values compared (asserted above 1e-4); a ratio that close to 1 ± ε is not among 64 samples
        assert value > 1e-4, (tag, value)
        assert last(logged, tag) == pytest.approx(value, abs=1e-6), tag
    # 1 − Var[returns − values] / Var[returns] of the rollout, where returns − values are the advantages
    ((advantages, returns),) = gae
    explained = 1 - np.var(advantages) / np.var(returns)
    # the script's float32 variances are exact to ~1e-6 relative; the value is of order 1
    assert last(logged, "losses/explained_variance") == pytest.approx(explained, abs=1e-4)
    assert abs(explained) > 1e-3


@pytest.mark.parametrize("anneal", [True, False])
@pytest.mark.parametrize("script", MLP)
def test_logged_learning_rate_is_the_schedules_and_the_one_adam_steps_with(script, anneal, tmp_path):
    ppo = load_script(script)
    stepped = []  # the learning rate of each optimizer step
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: stepped.append(float(optimizer.param_groups[0]["lr"]))
    )
    argv = tiny(script) if anneal else tiny(script, "--no-anneal-lr")
    try:
        logged = run_scalars(ppo, script, argv, tmp_path)["charts/learning_rate"]
    finally:
        hook.remove()
    args = tyro.cli(ppo.Args, args=argv)
    n, batch = args.num_iterations, args.num_envs * args.num_steps
    assert n >= 3
    # anneal: linear from the rate given to 0 over training (iteration i of n: 1 − (i − 1)/n of it); else constant
    schedule = [args.learning_rate * (1 - i / n if anneal else 1) for i in range(n)]
    assert [step for step, _ in logged] == [batch * (i + 1) for i in range(n)]
    assert [rate for _, rate in logged] == pytest.approx(schedule, rel=1e-6)  # logged as float32
    per_iteration = args.update_epochs * args.num_minibatches
    assert len(stepped) == n * per_iteration
    for i, rate in enumerate(schedule):
        assert stepped[i * per_iteration : (i + 1) * per_iteration] == pytest.approx([rate] * per_iteration, rel=1e-12)


# ---- switches ----
@pytest.mark.parametrize("script", MLP)
def test_the_same_arguments_train_the_same_weights(script, tmp_path):
    # what the tests of the switches below rely on: a difference between two runs comes from the switch
    first, _ = train(load_script(script), script, tiny(script), tmp_path / "a")
    second, _ = train(load_script(script), script, tiny(script), tmp_path / "b")
    assert same_weights(first["model"], second["model"])
    assert adam_steps(first) == adam_steps(second) > 0


@pytest.mark.parametrize("script", MLP)
def test_target_kl_stops_the_epochs_once_the_kl_estimate_exceeds_it(script, tmp_path):
    ppo = load_script(script)
    argv = tiny(script, "--learning-rate", "0.01")  # every epoch moves the policy: approx_kl ≥ 1e-4
    args = tyro.cli(ppo.Args, args=argv)
    full, _ = train(ppo, script, argv, tmp_path / "none")
    early, _ = train(ppo, script, [*argv, "--target-kl", "1e-6"], tmp_path / "tiny")
    never, _ = train(ppo, script, [*argv, "--target-kl", "1e6"], tmp_path / "huge")
    assert adam_steps(full) == args.num_iterations * args.update_epochs * args.num_minibatches
    # the estimate after the first epoch exceeds a tiny target: one epoch per update; with one minibatch per epoch
    # (ppo_lstm.py's tiny run) that epoch's estimate is taken at ratio 1 before its step, so two epochs
    epochs = 1 if args.num_minibatches > 1 else 2
    assert adam_steps(early) == args.num_iterations * args.num_minibatches * epochs
    # a target never reached changes nothing
    assert adam_steps(never) == adam_steps(full) and same_weights(never["model"], full["model"])


@pytest.mark.parametrize("script", MLP)
def test_no_norm_adv_takes_the_raw_advantages_into_the_policy_loss_only(script, tmp_path):
    ppo = load_script(script)
    # one step on one minibatch (ratio 1), where the policy loss is −mean(Â); no gradient clipping, which would
    # couple the critic's step to the actor's gradient
    argv = tiny(script, "--total-timesteps", one_batch(ppo, script), "--update-epochs", "1", "--num-minibatches", "1")
    argv += ["--max-grad-norm", "1e9"]
    runs, gae = [], []
    for flag in ([], ["--no-norm-adv"]):
        ppo = load_script(script)
        observe_update(ppo, [], gae)
        runs.append(train(ppo, script, [*argv, *flag], tmp_path / (flag[0] if flag else "default")))
    (normalized, normalized_log), (raw, raw_log) = runs
    (advantages, _), (advantages_again, _) = gae
    np.testing.assert_array_equal(advantages, advantages_again)  # the same rollout
    # normalized Â has mean 0 to float32 rounding (~1e-7 of values of order 1); raw Â has the GAE's mean,
    # ~1e-6 off at ratio 1 ± 1e-7 and advantages below 10
    assert abs(last(normalized_log, "losses/policy_loss")) < 1e-5
    assert abs(advantages.mean()) > 1e-2
    assert last(raw_log, "losses/policy_loss") == pytest.approx(-advantages.mean(), abs=1e-5)
    assert same_weights(normalized["model"], raw["model"], critic=True)
    assert not same_weights(normalized["model"], raw["model"], critic=False)


@pytest.mark.parametrize("script", MLP)
def test_no_clip_vloss_changes_the_value_update_only(script, tmp_path):
    ppo = load_script(script)
    # one update of 4 epochs at a rate that moves values by more than ε = 0.2, without gradient clipping (which
    # would couple the actor's step to the critic's gradient)
    # ppo_lstm.py on CartPole too: its first step overshoots POPGym's returns below 1, where the max keeps the unclipped
    # error and clipping changes nothing
    cartpole = ["--env-id", "CartPole-v1"] if script == "ppo_lstm.py" else []
    argv = tiny(script, "--learning-rate", "0.01", "--max-grad-norm", "1e9", *cartpole)
    argv += ["--total-timesteps", one_batch(ppo, script)]
    clipped, clipped_log = train(load_script(script), script, argv, tmp_path / "clip")
    unclipped, unclipped_log = train(load_script(script), script, [*argv, "--no-clip-vloss"], tmp_path / "noclip")
    assert not same_weights(clipped["model"], unclipped["model"], critic=True)
    assert last(clipped_log, "losses/value_loss") != last(unclipped_log, "losses/value_loss")
    if any(not name.startswith(("critic", "actor")) for name in clipped["model"]):
        return  # ppo_lstm.py: the value loss also trains the encoder and the LSTM, which the actor reads
    assert same_weights(clipped["model"], unclipped["model"], critic=False)
    assert last(clipped_log, "losses/policy_loss") == last(unclipped_log, "losses/policy_loss")


# ---- --resume ----
class Stop(Exception):
    """Raised by an observer to end a run once it has seen what it needed."""


@pytest.mark.parametrize("script", ALL)
def test_resume_restores_adams_state_and_torchs_rng_before_the_first_action(script, trained, tmp_path):
    cwd, path = trained(script)
    shutil.copytree(cwd, tmp_path, dirs_exist_ok=True)  # the resumed run writes beside the checkpoint
    path = os.path.join(tmp_path, os.path.relpath(path, cwd))
    saved = torch.load(path, weights_only=True)
    ppo = load_script(script)
    optimizers, seen = [], {}

    class ObservedAdam(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    def at_the_first_draw(action, kwargs):
        if action is None and not kwargs.get("deterministic"):  # an action sampled in the rollout
            (optimizer,) = optimizers
            seen["rng"] = torch.get_rng_state()
            seen["optimizer"] = copy.deepcopy(optimizer.state_dict())
            raise Stop

    class Observed(ppo.Agent):
        def get_action(self, x, action=None, *args, **kwargs):
            at_the_first_draw(action, kwargs)
            return super().get_action(x, action, *args, **kwargs)

        def get_action_and_value(self, x, action=None, *args, **kwargs):
            at_the_first_draw(action, kwargs)
            return super().get_action_and_value(x, action, *args, **kwargs)

    ppo.Agent, adam = Observed, torch.optim.Adam
    torch.optim.Adam = ObservedAdam
    argv = ["--resume", path, "--total-timesteps", str(2 * saved["global_step"]), "--eval-episodes", "0", *ONE_THREAD]
    try:
        with pytest.raises(Stop):
            run_main(ppo, script, argv, tmp_path)
    finally:
        torch.optim.Adam = adam
    assert torch.equal(seen["rng"], saved["rng"])
    state, saved_state = seen["optimizer"]["state"], saved["optimizer"]["state"]
    assert state.keys() == saved_state.keys() and saved_state
    for key, moments in saved_state.items():
        assert moments.keys() == state[key].keys()
        assert all(torch.equal(torch.as_tensor(state[key][k]), torch.as_tensor(v)) for k, v in moments.items())
    assert all(int(moments["step"]) > 0 for moments in saved_state.values())  # a fresh Adam has no state
