"""What a run can be trusted with: --resume goes on in its checkpoint's folder from any working directory, with the
learning rate decaying on from where it was; an argument the run would ignore, a seed the envs cannot take and a
checkpoint the code cannot use are refused in one line before anything is written; under torchrun the
normalization statistics of the ranks merge into exactly those of one process that saw every step. The scripts run
in-process (main(Args) as from the command line), a researcher's edit (a wider network, another optimizer) made by
replacing ppo.Agent or torch.optim.Adam."""

import glob
import hashlib
import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, SCRIPTS, load_script, problem, run_dirs, run_script, scalars
from gymnasium.wrappers.utils import RunningMeanStd
from test_claims import ONE_THREAD, one_batch, run_main, tiny

ALL = sorted(SCRIPTS)
PENALTY = ["ppo_penalty.py", "ppo_penalty_continuous.py"]  # no clipped surrogate: ε only clips the value update
CONTINUOUS = ["ppo_continuous.py", "ppo_penalty_continuous.py"]  # normalize observations and rewards


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """script -> (run folder, checkpoint path, logged scalars) of the tiny run with --save-model: 4 iterations, so
    that a resume starts from a learning rate below the initial one. Trained once per module; copy before changing."""
    cache = {}

    def get(script: str) -> tuple[str, str, dict]:
        if script not in cache:
            cwd = tmp_path_factory.mktemp("trained")
            run_main(load_script(script), script, tiny(script, "--save-model"), cwd)
            (run_dir,) = run_dirs(cwd)
            (path,) = glob.glob(os.path.join(run_dir, "*.pt"))
            cache[script] = run_dir, path, scalars(run_dir)
        return cache[script]

    return get


def copied_run(trained_run: tuple, folder) -> tuple[str, str]:
    """A copy of a trained run's folder at folder: (folder, its checkpoint path)."""
    run_dir, path, _ = trained_run
    shutil.copytree(run_dir, folder)
    return str(folder), os.path.join(str(folder), os.path.basename(path))


def snapshot(folder) -> dict[str, str]:
    """Every file under folder -> the sha256 of its bytes."""
    files = sorted(glob.glob(os.path.join(str(folder), "**"), recursive=True))
    return {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files if os.path.isfile(f)}


def refused(ppo, script: str, argv: list[str], cwd) -> str:
    """Runs the script in a new empty folder cwd; asserts it refused in one line and wrote nothing there; the line."""
    os.makedirs(cwd)
    with pytest.raises(SystemExit) as exit_info:
        run_main(ppo, script, argv, cwd)
    message = exit_info.value.code
    # sys.exit(a string): Python prints it to stderr and exits with status 1
    assert isinstance(message, str) and message.startswith(f"{script}: error: "), message
    assert "\n" not in message
    assert os.listdir(cwd) == []  # no runs/ (nor videos/)
    return message


def doubled(path: str) -> str:
    """--total-timesteps of twice the checkpoint's steps (a refusal that fails trains only that long)."""
    return str(2 * torch.load(path, weights_only=True)["global_step"])


def lr_curve(run_dir) -> list[tuple[int, float]]:
    return scalars(run_dir)["charts/learning_rate"]


def test_the_tests_read_a_resumed_runs_event_files_in_the_order_they_were_written(tmp_path):
    """Not in name order, as TensorBoard's folder reader does: a resume run in-process in the same second as the
    run it resumes writes a file whose name sorts first (the writers' counter goes from ...9 to ...10)."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = tmp_path / "run"
    for name, steps in [("events.out.tfevents.1.host.1.9", [64, 128]), ("events.out.tfevents.1.host.1.10", [192])]:
        writer = SummaryWriter(tmp_path / name)
        for step in steps:
            writer.add_scalar("charts/learning_rate", step, step)
        writer.close()
        (path,) = glob.glob(str(tmp_path / name / "events.out.tfevents.*"))
        os.renames(path, run_dir / name)
    assert sorted(os.listdir(run_dir)) == ["events.out.tfevents.1.host.1.10", "events.out.tfevents.1.host.1.9"]
    assert [step for step, _ in lr_curve(run_dir)] == [64, 128, 192]


# ---- --resume from anywhere ----
@pytest.mark.parametrize("script", ALL)
def test_resume_goes_on_in_the_folder_of_the_checkpoint_whatever_the_cwd_and_file_name(script, trained, tmp_path):
    _, path, logged = trained(script)
    saved = torch.load(path, weights_only=True)
    # the run folder moved and renamed, the checkpoint renamed: the script learns both only from PATH
    folder, _ = copied_run(trained(script), tmp_path / "B" / "renamed")
    best = os.path.join(folder, "best.pt")
    os.rename(os.path.join(folder, os.path.basename(path)), best)
    other = tmp_path / "C"  # the resume runs here, given PATH relative to it
    argv = ["--resume", os.path.relpath(best, other), "--total-timesteps", str(2 * saved["global_step"])]
    run_main(load_script(script), script, [*argv, "--eval-episodes", "0", *ONE_THREAD], other)
    assert os.listdir(other) == []  # no runs/ under the cwd
    assert sorted(os.listdir(tmp_path)) == ["B", "C"] and os.listdir(tmp_path / "B") == ["renamed"]
    # PATH rewritten, no other checkpoint written: best.pt and the two runs' event files
    resumed = torch.load(best, weights_only=True)
    assert resumed["global_step"] == 2 * saved["global_step"] and resumed["iteration"] == 2 * saved["iteration"]
    assert sorted(name for name in os.listdir(folder) if not name.startswith("events.out.tfevents")) == ["best.pt"]
    assert len(os.listdir(folder)) == 3
    # one curve: the resumed run's points follow the first run's, one per iteration
    batch = saved["global_step"] // saved["iteration"]
    assert [step for step, _ in logged["charts/learning_rate"]] == [batch * i for i in range(1, saved["iteration"] + 1)]
    steps = [step for step, _ in lr_curve(folder)]
    assert steps == [batch * i for i in range(1, 2 * saved["iteration"] + 1)]


# ---- the learning rate after --resume ----
class Crash(Exception):
    """Raised inside a run to end it as a crash would."""


def crashed(ppo, script: str, argv: list[str], cwd, after_iteration: int) -> str:
    """Runs argv saving a checkpoint after every iteration, crashing in the iteration after after_iteration; the
    path of the checkpoint it left."""
    calls = []

    def observed_gae(*args, **kwargs):  # called once per iteration, after the rollout
        calls.append(None)
        if len(calls) > after_iteration:
            raise Crash
        return compute_gae(*args, **kwargs)

    compute_gae, ppo.compute_gae = ppo.compute_gae, observed_gae
    with pytest.raises(Crash):  # --checkpoint-minutes 1e-9: every iteration takes longer than 60 ns
        run_main(ppo, script, [*argv, "--save-model", "--checkpoint-minutes", "1e-9"], cwd)
    (path,) = glob.glob(os.path.join(str(cwd), "runs", "*", "*.pt"))
    assert torch.load(path, weights_only=True)["iteration"] == after_iteration
    return path


@pytest.mark.parametrize("script", ALL)
def test_resumed_learning_rate_decays_on_from_the_checkpoints_to_zero_at_the_new_end(script, trained, tmp_path):
    _, path, logged = trained(script)
    before = logged["charts/learning_rate"]
    folder, path = copied_run(trained(script), tmp_path / "run")
    saved = torch.load(path, weights_only=True)
    k, lr_k = saved["iteration"], saved["optimizer"]["param_groups"][0]["lr"]
    new_n = 2 * k
    argv = ["--resume", path, "--total-timesteps", str(2 * saved["global_step"]), "--eval-episodes", "0"]
    run_main(load_script(script), script, [*argv, *ONE_THREAD], tmp_path / "cwd")
    after = [(step, lr) for step, lr in lr_curve(folder) if step > saved["global_step"]]
    assert len(after) == new_n - k and k >= 3
    assert lr_k < before[0][1]  # annealed: a restart of the schedule would jump up
    assert lr_k == pytest.approx(before[-1][1], rel=1e-6)  # logged as float32
    # no jump up at the resume; then linear to 0 one iteration after the new end
    assert max(lr for _, lr in after) <= before[-1][1]
    expected = [lr_k * (new_n + 1 - i) / (new_n + 1 - k) for i in range(k + 1, new_n + 1)]
    assert [lr for _, lr in after] == pytest.approx(expected, rel=1e-6)  # float32 values of order 1e-4


@pytest.mark.parametrize("script", ALL)
def test_resume_with_the_same_budget_reproduces_the_uninterrupted_schedule(script, trained, tmp_path):
    _, _, logged = trained(script)
    ppo = load_script(script)
    path = crashed(ppo, script, tiny(script), tmp_path / "cwd", after_iteration=2)
    # as if the uninterrupted run had crashed after logging its last iteration, its last checkpoint the 2nd
    folder, last = copied_run(trained(script), tmp_path / "run")
    shutil.copy(path, last)
    # the budget comes from the checkpoint (a flag not given takes the checkpoint's value)
    run_main(load_script(script), script, ["--resume", last, *ONE_THREAD], tmp_path / "elsewhere")
    curve = lr_curve(folder)  # one curve: what the first run logged after the checkpoint is dropped (purge_step)
    uninterrupted = logged["charts/learning_rate"]
    assert [step for step, _ in curve] == [step for step, _ in uninterrupted] and len(curve) >= 4
    # float32 logged values of order 1e-4 computed by two formulas: equal to float32 rounding
    assert [lr for _, lr in curve] == pytest.approx([lr for _, lr in uninterrupted], rel=1e-6)


# ---- arguments never silently ignored ----
@pytest.mark.parametrize("script", ALL)
def test_checkpoint_minutes_without_save_model_is_refused(script, tmp_path):
    ppo = load_script(script)
    message = refused(ppo, script, tiny(script, "--checkpoint-minutes", "3"), tmp_path / "cwd")
    assert message.endswith("--checkpoint-minutes needs --save-model"), message
    assert problem(ppo, tiny(script, "--checkpoint-minutes", "3", "--save-model")) is None
    assert problem(ppo, tiny(script)) is None  # its default without --save-model is no error


@pytest.mark.parametrize("script", ALL)
def test_clip_coef_with_no_clip_vloss_is_refused_where_nothing_else_reads_it(script, tmp_path):
    ppo = load_script(script)
    both = tiny(script, "--clip-coef", "0.3", "--no-clip-vloss")
    if script in PENALTY:
        message = refused(ppo, script, both, tmp_path / "cwd")
        assert "--clip-coef" in message and "--no-clip-vloss" in message, message
    else:  # the clipped surrogate reads ε
        assert problem(ppo, both) is None
    assert problem(ppo, tiny(script, "--clip-coef", "0.3")) is None
    assert problem(ppo, tiny(script, "--no-clip-vloss")) is None


@pytest.mark.parametrize("script", ALL)
def test_resume_with_another_exp_name_rewrites_the_checkpoint_it_resumes(script, trained, tmp_path):
    folder, path = copied_run(trained(script), tmp_path / "run")
    steps = torch.load(path, weights_only=True)["global_step"]
    argv = ["--resume", path, "--total-timesteps", doubled(path), "--exp-name", "other", "--eval-episodes", "0"]
    run_main(load_script(script), script, [*argv, *ONE_THREAD], tmp_path / "cwd")
    assert torch.load(path, weights_only=True)["global_step"] == 2 * steps  # the file resumed, not other.pt
    assert not glob.glob(os.path.join(folder, "other.pt")) and os.listdir(tmp_path / "cwd") == []


@pytest.mark.parametrize("script", ALL)
def test_target_kl_with_one_epoch_is_refused(script):
    ppo = load_script(script)
    message = problem(ppo, [*tiny(script), "--target-kl", "0.01", "--update-epochs", "1"])
    assert message is not None and "--target-kl stops after an epoch" in message, message
    assert problem(ppo, [*tiny(script), "--target-kl", "0.01", "--update-epochs", "2"]) is None


def test_a_seed_of_2_to_the_31_or_more_is_refused_with_exit_status_1(tmp_path):
    script = "ppo_discrete.py"
    message = refused(load_script(script), script, tiny(script, "--seed", str(2**31)), tmp_path / "cwd")
    assert message.endswith("--seed 2147483648 must be in [0, 2**31)"), message
    proc = run_script(script, tiny(script, "--seed", str(2**31)), tmp_path / "cwd", check=False)
    assert proc.returncode == 1 and proc.stderr == f"{message}\n" and proc.stdout == ""
    assert os.listdir(tmp_path / "cwd") == []


@pytest.mark.parametrize("script", ["ppo_discrete.py", "ppo_atari.py"])
def test_the_largest_seed_runs_its_env_seeds_wrapping_below_2_to_the_31(script, tmp_path):
    ppo = load_script(script)
    seeds = []

    def observed_make_envs(*args, **kwargs):
        envs = make_envs(*args, **kwargs)
        reset = envs.reset

        def observed_reset(*reset_args, **reset_kwargs):
            seeds.append([int(seed) for seed in reset_kwargs["seed"]])
            return reset(*reset_args, **reset_kwargs)

        envs.reset = observed_reset
        return envs

    make_envs, ppo.make_envs = ppo.make_envs, observed_make_envs
    argv = tiny(script, "--total-timesteps", one_batch(ppo, script), "--num-envs", "2", "--seed", str(2**31 - 1))
    run_main(ppo, script, argv, tmp_path)
    assert seeds == [[2**31 - 1, 0]]  # ale-py takes only seeds below 2**31
    (run_dir,) = run_dirs(tmp_path)
    assert len(scalars(run_dir)["charts/learning_rate"]) == 1


# ---- checkpoints the code cannot use ----
def wider(ppo):
    """ppo.Agent with a wider hidden layer, as a researcher would edit it."""

    class Wider(ppo.Agent):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "hidden_dim": 80})

    return Wider


@pytest.mark.parametrize("mode", ["--resume", "--eval-checkpoint"])
@pytest.mark.parametrize("script", ALL)
def test_a_checkpoint_of_another_network_is_refused_before_anything_is_written(script, mode, trained, tmp_path):
    folder, path = copied_run(trained(script), tmp_path / "run")
    files = snapshot(folder)
    ppo = load_script(script)
    ppo.Agent = wider(ppo)
    extra = (
        ["--total-timesteps", doubled(path), "--eval-episodes", "0"] if mode == "--resume" else ["--eval-episodes", "1"]
    )
    message = refused(ppo, script, [mode, path, *extra, *ONE_THREAD], tmp_path / "cwd")
    assert "network differs" in message, message
    assert snapshot(folder) == files  # no event file, the checkpoint as it was


def with_running_mean(ppo):
    """ppo.Agent with state a researcher adds to the model: a running mean of the observations, as a buffer."""

    class Agent(ppo.Agent):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("obs_mean", torch.zeros(args[0]))

        def get_value(self, x):
            self.obs_mean.mul_(0.99).add_(0.01 * x.float().mean(0))  # new state, updated as the agent is used
            return super().get_value(x)

    return Agent


@pytest.mark.parametrize("script", ["ppo_discrete.py", "ppo_continuous.py"])
def test_state_added_as_a_module_buffer_travels_with_the_weights_and_an_older_checkpoint_is_refused(
    script, trained, tmp_path
):
    folder, path = copied_run(trained(script), tmp_path / "run")
    ppo = load_script(script)
    ppo.Agent = with_running_mean(ppo)
    argv = ["--resume", path, "--total-timesteps", doubled(path), "--eval-episodes", "0", *ONE_THREAD]
    assert "network differs" in refused(ppo, script, argv, tmp_path / "cwd")  # written before the buffer existed
    run_main(ppo, script, [*tiny(script, "--save-model"), *ONE_THREAD], tmp_path / "new")
    (new_path,) = glob.glob(str(tmp_path / "new" / "runs" / "*" / "*.pt"))
    saved = torch.load(new_path, weights_only=True)["model"]["obs_mean"]
    assert saved.abs().sum() > 0  # it moved during training and was saved with the weights
    seen = []
    get_value = ppo.Agent.get_value

    def first_value(self, x):  # the buffer as the resumed run starts using it
        if not seen:
            seen.append(self.obs_mean.clone())
        return get_value(self, x)

    ppo.Agent.get_value = first_value
    run_main(ppo, script, ["--resume", new_path, "--total-timesteps", doubled(new_path), *ONE_THREAD], tmp_path / "c")
    torch.testing.assert_close(seen[0], saved, rtol=0, atol=0)  # restored exactly, by the weights' own load


class Tracker:
    """State a researcher adds outside the model (a normalizer of an intrinsic reward): a vector, numbered by the
    order the instances are built in, with the state_dict() and load_state_dict() that main's resumable asks for."""

    built = []

    def __init__(self):
        Tracker.built.append(self)
        self.value = torch.full((3,), float(len(Tracker.built)))

    def state_dict(self) -> dict:
        return {"value": self.value.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"].clone()


def with_tracker(script: str, folder):
    """A copy of the script in folder (same file name) whose only edit is one entry added to main's resumable."""
    source = (ROOT / script).read_text()
    assert source.count("resumable = dict(model=agent, optimizer=optimizer") == 1
    edited = source.replace("resumable = dict(", "resumable = dict(tracker=Tracker(), ")
    os.makedirs(folder)
    (folder / script).write_text(edited)
    spec = importlib.util.spec_from_file_location(script[: -len(".py")], folder / script)
    ppo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ppo)
    ppo.Tracker = Tracker
    return ppo


@pytest.mark.parametrize("script", ALL)
def test_state_added_to_resumable_in_one_line_is_saved_restored_and_required(script, trained, tmp_path):
    ppo = with_tracker(script, tmp_path / "edited")
    # a checkpoint written before the entry existed: refused in one line naming it, nothing written
    folder, old = copied_run(trained(script), tmp_path / "old")
    files = snapshot(folder)
    argv = ["--resume", old, "--total-timesteps", doubled(old), "--eval-episodes", "0", *ONE_THREAD]
    assert "has no ['tracker']" in refused(ppo, script, argv, tmp_path / "cwd")
    assert snapshot(folder) == files
    # saved with each checkpoint
    Tracker.built.clear()
    run_main(ppo, script, tiny(script, "--save-model"), tmp_path / "new")
    (path,) = glob.glob(str(tmp_path / "new" / "runs" / "*" / "*.pt"))
    assert torch.equal(torch.load(path, weights_only=True)["tracker"]["value"], torch.full((3,), 1.0))
    # restored by --resume (the resumed run builds a second instance, valued 2, then loads 1 into it) and carried on
    run_main(ppo, script, ["--resume", path, "--total-timesteps", doubled(path), *ONE_THREAD], tmp_path / "resume")
    assert len(Tracker.built) == 2 and torch.equal(Tracker.built[1].value, torch.full((3,), 1.0))
    assert torch.equal(torch.load(path, weights_only=True)["tracker"]["value"], torch.full((3,), 1.0))
    # and by --eval-checkpoint, which evaluates with all but the optimizer
    run_main(ppo, script, ["--eval-checkpoint", path, "--eval-episodes", "1", *ONE_THREAD], tmp_path / "eval")
    assert len(Tracker.built) == 3 and torch.equal(Tracker.built[2].value, torch.full((3,), 1.0))


def adamw(params, **kwargs):
    """torch.optim.Adam edited into AdamW with weight decay."""
    return torch.optim.AdamW(params, **kwargs, weight_decay=0.01)


@pytest.mark.parametrize("script", ALL)
def test_resume_with_other_optimizer_settings_is_refused_evaluation_is_not(script, trained, tmp_path, monkeypatch):
    folder, path = copied_run(trained(script), tmp_path / "run")
    files = snapshot(folder)
    monkeypatch.setattr(torch.optim, "Adam", adamw)
    argv = ["--resume", path, "--total-timesteps", doubled(path), "--eval-episodes", "0", *ONE_THREAD]
    message = refused(load_script(script), script, argv, tmp_path / "cwd")
    assert "optimizer settings differ" in message, message
    assert snapshot(folder) == files
    # evaluation needs only the network
    run_main(load_script(script), script, ["--eval-checkpoint", path, "--eval-episodes", "1", *ONE_THREAD], tmp_path)
    assert len(scalars(run_dirs(tmp_path)[0])["eval/episodic_return"]) == 1


@pytest.mark.parametrize("script", ALL)
def test_a_checkpoint_without_a_newer_argument_resumes_only_with_it_given(script, trained, tmp_path):
    folder, path = copied_run(trained(script), tmp_path / "run")
    saved = torch.load(path, weights_only=True)
    del saved["args"]["ent_coef"]  # written by a version of the script before --ent-coef
    torch.save(saved, path)
    files = snapshot(folder)
    argv = ["--resume", path, "--total-timesteps", str(2 * saved["global_step"]), "--eval-episodes", "0", *ONE_THREAD]
    message = refused(load_script(script), script, argv, tmp_path / "cwd")
    assert message.endswith(f"{path!r} was written without --ent-coef: give --ent-coef to resume it"), message
    assert snapshot(folder) == files
    run_main(load_script(script), script, [*argv, "--ent-coef", "0.01"], tmp_path / "given")
    resumed = torch.load(path, weights_only=True)
    assert resumed["global_step"] == 2 * saved["global_step"] and resumed["args"]["ent_coef"] == 0.01


# ---- normalization statistics under torchrun ----
def rms(shape: tuple, *batches) -> RunningMeanStd:
    stats = RunningMeanStd(shape=shape)  # gymnasium's, as NormalizeObservation and NormalizeReward keep them
    for batch in batches:
        stats.update(batch)
    return stats


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("script", CONTINUOUS)
def test_ranks_normalization_statistics_merge_into_those_of_one_process_seeing_every_step(script, world_size):
    ppo = load_script(script)
    rng = np.random.default_rng(0)
    for shape in ((3,), ()):  # observations (n, 3); rewards: NormalizeReward's scalar statistic of n returns
        prior_data = rng.normal(1.0, 2.0, (50, *shape))
        # every rank a different number of steps from a different distribution
        data = [rng.normal(3.0 * r, 0.5 + r, (7 + 40 * r, *shape)) for r in range(world_size)]
        prior = rms(shape, prior_data)  # the statistics every rank shares after the last merge
        ranks = [rms(shape, prior_data, own) for own in data]  # each rank's after its own steps
        # main(): each rank's contribution, then all_reduce's sum over the ranks
        prior_sums = ppo.moment_sums(prior.mean, prior.var, prior.count)
        contributions = [ppo.moment_sums(r.mean, r.var, r.count) - (1 - 1 / world_size) * prior_sums for r in ranks]
        mean, var, count = ppo.merge_moments(sum(contributions))
        one = rms(shape, prior_data, *data)  # one process that saw the prior's steps, then every rank's
        # float64 sums of values of order 10 (means 1 to 4, variances above 0.25): rounding ~1e-14 relative
        np.testing.assert_allclose(mean, one.mean, rtol=1e-9)
        np.testing.assert_allclose(var, one.var, rtol=1e-9)
        assert count == pytest.approx(one.count, rel=1e-12)
        assert np.shape(mean) == np.shape(var) == shape
        # what the test tells apart: a plain average of the ranks' means and variances is far off
        average_mean = np.mean([r.mean for r in ranks], axis=0)
        average_var = np.mean([r.var for r in ranks], axis=0)
        assert not np.allclose(average_mean, one.mean, rtol=1e-2) and not np.allclose(average_var, one.var, rtol=1e-2)
