"""End-to-end tests: every script run as a subprocess on a tiny budget, checked by what it wrote."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from conftest import ROOT, SCRIPTS, TRAIN_TAGS, load_script, problem, run_dirs, run_script, scalars, texts
from filelock import FileLock


def tiny(script: str) -> list[str]:
    return ["--env-id", SCRIPTS[script]["env_id"], *SCRIPTS[script]["tiny"]]


def with_tiny(script: str, args: list[str]) -> list[str]:
    """args after the tiny run's arguments; --eval-checkpoint reads only the env id (it refuses the rest)."""
    return ["--env-id", SCRIPTS[script]["env_id"], *args] if "--eval-checkpoint" in args else [*tiny(script), *args]


def expected_tags(script: str) -> set[str]:
    return TRAIN_TAGS - set(SCRIPTS[script].get("skip_tags", ()))


def checkpoint_path(run_dir: str, script: str) -> str:
    return os.path.join(run_dir, script[: -len(".py")] + ".pt")


@pytest.fixture(scope="module")
def trained(script, tmp_path_factory):
    """A tiny run with --save-model: (cwd, run_dir, checkpoint, stdout). Trained once per session: the
    pytest-xdist workers share it through a file lock (a test copies it before changing it)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this session's folder
    record = shared / f"trained-{script}.json"
    with FileLock(shared / f"trained-{script}.lock"):
        if not record.exists():
            cwd = tmp_path_factory.mktemp("trained")
            proc = run_script(script, [*tiny(script), "--save-model"], cwd)
            (run_dir,) = run_dirs(cwd)
            record.write_text(json.dumps([str(cwd), run_dir, checkpoint_path(run_dir, script), proc.stdout]))
    cwd, run_dir, path, stdout = json.loads(record.read_text())
    return Path(cwd), run_dir, path, stdout


def test_tiny_run_logs_every_tag_hyperparameters_and_progress(script, trained):
    _, run_dir, _, stdout = trained
    logged = scalars(run_dir)
    assert expected_tags(script) | {"eval/episodic_return"} <= set(logged)
    losses = logged["losses/value_loss"]
    assert len(losses) >= 2 and all(step > 0 for step, _ in losses)
    assert any("hyperparameters" in tag for tag in texts(run_dir))
    assert "step" in stdout and "SPS" in stdout and "ETA" in stdout
    assert len(stdout.splitlines()) < 10  # not one line per iteration in a log file


def test_checkpoint_holds_weights_optimizer_args_step_and_rng(script, trained):
    _, run_dir, path, _ = trained
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["script"] == script
    assert {"model", "optimizer", "args", "iteration", "global_step", "rng", "cuda_rng"} <= set(checkpoint)
    assert checkpoint["args"]["env_id"] == SCRIPTS[script]["env_id"]
    assert checkpoint["global_step"] > 0 and checkpoint["iteration"] > 0
    # torch.optim.Adam's own state_dict: a step count and both moment estimates for every parameter
    states = checkpoint["optimizer"]["state"]
    assert len(states) == len(checkpoint["model"]) and all(state["step"] > 0 for state in states.values())
    shapes = sorted(tuple(weight.shape) for weight in checkpoint["model"].values())
    assert sorted(tuple(state["exp_avg_sq"].shape) for state in states.values()) == shapes


def test_resume_continues_step_count_schedule_and_the_same_tensorboard_run(script, trained, tmp_path):
    cwd, run_dir, path, _ = trained
    shutil.copytree(cwd, tmp_path, dirs_exist_ok=True)  # the other tests keep the trained run as it was
    run_dir, path = (os.path.join(tmp_path, os.path.relpath(p, cwd)) for p in (run_dir, path))
    first = scalars(run_dir)["charts/learning_rate"]
    batch_size, last_step, num_iterations = first[0][0], first[-1][0], len(first)
    total = 2 * num_iterations * batch_size
    # only the budget is given: the sizes, the env id and every hyperparameter come from the checkpoint
    run_script(script, ["--resume", path, "--total-timesteps", str(total), "--eval-episodes", "0"], tmp_path)
    assert run_dirs(tmp_path) == [run_dir]
    curve = scalars(run_dir)["charts/learning_rate"]
    assert [step for step, _ in curve] == [batch_size * (i + 1) for i in range(2 * num_iterations)]
    second = curve[num_iterations:]
    assert second[0][0] == last_step + batch_size
    # a larger budget: the rate decays on from the last one, linearly to 0 after the new last iteration, no jump
    expected = [first[-1][1] * (num_iterations - i) / (num_iterations + 1) for i in range(num_iterations)]
    assert [lr for _, lr in second] == pytest.approx(expected, rel=1e-5)  # float32 in the event file: 6 digits
    assert torch.load(path, weights_only=True)["global_step"] == total
    # the arguments: the first run's at step 0, the resumed run's (its own budget) just after the checkpoint's step
    arguments = texts(run_dir)["hyperparameters/text_summary"]
    assert [step for step, _ in arguments] == [0, last_step + 1]
    assert f"|total_timesteps|{total}|" in arguments[1][1] and f"|total_timesteps|{total}|" not in arguments[0][1]


def test_killed_run_resumes_from_its_last_periodic_checkpoint_in_one_curve(script, tmp_path):
    # --checkpoint-minutes 0.0001: a checkpoint after every iteration; the budget is far more than the test waits
    args = [*tiny(script), "--total-timesteps", "100000000", "--save-model", "--checkpoint-minutes", "0.0001"]
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=tmp_path, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        paths = glob.glob(str(tmp_path / "runs" / "*" / "*.pt"))
        if paths and len(scalars(os.path.dirname(paths[0])).get("charts/SPS", [])) >= 3:
            break
        time.sleep(0.2)
    proc.kill()  # SIGKILL: no handler runs, nothing is saved at exit
    proc.wait(timeout=60)
    (run_dir,) = run_dirs(tmp_path)
    (path,) = glob.glob(os.path.join(run_dir, "*.pt"))
    saved = torch.load(path, weights_only=True)
    batch_size = saved["global_step"] // saved["iteration"]
    total = saved["global_step"] + 2 * batch_size
    run_script(script, ["--resume", path, "--total-timesteps", str(total), "--eval-episodes", "0"], tmp_path)
    assert run_dirs(tmp_path) == [run_dir]
    # one curve: what the killed run logged after its checkpoint is dropped, the resumed run logs on from there
    logged = scalars(run_dir)
    assert [step for step, _ in logged["charts/learning_rate"]] == [
        batch_size * (i + 1) for i in range(total // batch_size)
    ]
    assert all([step for step, _ in values] == sorted(step for step, _ in values) for values in logged.values())
    resumed = torch.load(path, weights_only=True)
    assert (resumed["iteration"], resumed["global_step"]) == (saved["iteration"] + 2, total)


def test_resuming_the_same_checkpoint_twice_logs_the_same_values_and_the_saved_rng_is_used(script, trained, tmp_path):
    cwd, run_dir, path, _ = trained
    logs = []
    for copy in ("a", "b", "other_rng") if script == "ppo_discrete.py" else ("a", "b"):  # the same RNG code in all
        shutil.copytree(cwd, tmp_path / copy)
        copied = str(tmp_path / copy / os.path.relpath(path, cwd))
        checkpoint = torch.load(copied, weights_only=True)
        if copy == "other_rng":  # the same checkpoint but for torch's RNG state
            checkpoint["rng"] = torch.Generator().manual_seed(12345).get_state()
            torch.save(checkpoint, copied)
        total = str(2 * checkpoint["global_step"])
        run_script(script, ["--resume", copied, "--total-timesteps", total, "--eval-episodes", "0"], tmp_path / copy)
        (resumed_dir,) = run_dirs(tmp_path / copy)
        logs.append({tag: values for tag, values in scalars(resumed_dir).items() if tag != "charts/SPS"})
    assert logs[0] == logs[1]
    assert len(logs) == 2 or logs[0]["losses/value_loss"] != logs[2]["losses/value_loss"]


def test_checkpoint_that_does_not_fit_the_arguments_is_named(script, trained, monkeypatch, tmp_path):
    _, _, path, _ = trained
    ppo = load_script(script)
    checkpoint = torch.load(path, weights_only=True)
    steps = str(checkpoint["global_step"])
    monkeypatch.chdir(tmp_path)
    for args, fragment in [
        (["--resume", path, "--num-steps", "16"], f"--num-steps 16 conflicts with {path!r}'s --num-steps"),
        (["--resume", path, "--seed", "7"], f"--seed 7 conflicts with {path!r}'s --seed 1"),
        (["--eval-checkpoint", path, "--env-id", "Ant-v5"], f"--env-id Ant-v5 conflicts with {path!r}'s --env-id"),
        (["--resume", path, "--total-timesteps", steps], "raise --total-timesteps"),
        (["--eval-checkpoint", path, "--eval-episodes", "0"], "--eval-episodes 1 or more"),
        (["--eval-checkpoint", path, "--gamma", "0.9"], "--eval-checkpoint does not use --gamma"),
    ]:
        message = problem(ppo, with_tiny(script, args))
        assert message is not None and fragment in message, (args, message)
    env_id = SCRIPTS[script]["env_id"]
    assert problem(ppo, ["--env-id", env_id, "--eval-checkpoint", path, "--eval-deterministic"]) is None
    assert os.listdir(tmp_path) == []


def test_from_python_the_arguments_that_differ_from_the_defaults_count_as_given(script, trained, monkeypatch):
    _, _, path, _ = trained
    ppo, saved = load_script(script), torch.load(path, weights_only=True)["args"]
    monkeypatch.setattr(sys, "argv", ["my_research.py", "--seed", "7"])  # another program's command line
    args = ppo.Args(resume=path, total_timesteps=12_345_678)  # main(Args(...)) called from that program
    ppo.check_args(args)
    assert (args.env_id, args.num_steps, args.seed) == (saved["env_id"], saved["num_steps"], saved["seed"])
    assert args.total_timesteps == 12_345_678
    with pytest.raises(ValueError, match="--num-steps 16 conflicts with"):
        ppo.check_args(ppo.Args(resume=path, total_timesteps=12_345_678, num_steps=16))


def test_eval_checkpoint_evaluates_without_training(script, trained, tmp_path):
    _, _, path, _ = trained
    args = ["--eval-checkpoint", path, "--eval-episodes", "2"]  # the env id comes from the checkpoint
    proc = run_script(script, args, tmp_path)
    assert "eval" in proc.stdout
    (eval_dir,) = run_dirs(tmp_path)
    logged = scalars(eval_dir)
    assert len(logged["eval/episodic_return"]) == 2
    assert "losses/value_loss" not in logged


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_stops_cleanly_with_log_and_checkpoint(script, tmp_path, signum):
    args = [*tiny(script), "--total-timesteps", "100000000", "--save-model", "--eval-episodes", "0"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / script), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training has logged a few updates
        dirs = run_dirs(tmp_path)
        if dirs and len(scalars(dirs[0]).get("losses/value_loss", [])) >= 2:
            break
        time.sleep(0.5)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr.decode()
    assert b"Traceback" not in stderr
    (run_dir,) = run_dirs(tmp_path)
    logged = scalars(run_dir)
    assert len(logged["losses/value_loss"]) >= 2
    checkpoint = torch.load(checkpoint_path(run_dir, script), weights_only=True)
    assert checkpoint["global_step"] == logged["losses/value_loss"][-1][0]


def test_ctrl_c_during_the_final_evaluation_keeps_the_finished_runs_checkpoint(script, tmp_path):
    args = [*tiny(script), "--save-model", "--eval-episodes", "100000"]
    command = [sys.executable, str(ROOT / script), *args]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(tmp_path / "runs" / "*" / "*.pt")):
        time.sleep(0.2)  # the checkpoint of the last iteration is written before the evaluation starts
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:  # two signals that arrive before Python runs its handler count as one: wait for it
        if "SIGINT: stopping" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # the second Ctrl-C aborts the evaluation at once
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in stderr, stderr
    (run_dir,) = run_dirs(tmp_path)
    checkpoint = torch.load(checkpoint_path(run_dir, script), weights_only=True)
    assert checkpoint["global_step"] == scalars(run_dir)["losses/value_loss"][-1][0]
    assert checkpoint["iteration"] == checkpoint["args"]["total_timesteps"] // (
        checkpoint["global_step"] // checkpoint["iteration"]
    )


def test_a_second_ctrl_c_inside_a_lock_of_the_standard_library_aborts_10_ms_later(script):
    """A KeyboardInterrupt raised inside threading's Condition.notify (between releasing the log writer's thread
    and forgetting it) loses that thread's next wake-up: writer.close() then hung for up to 2 minutes (seen in
    test_ctrl_c_during_the_final_evaluation..., whose evaluation logs every episode). Raised anywhere else, at
    once."""
    ppo = load_script(script)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = ppo.handle_stop_signals()
        request_stop = signal.getsignal(signal.SIGINT)
        request_stop(signal.SIGINT, sys._getframe())  # the first Ctrl-C: stop after this iteration
        assert stop["signal"] == signal.SIGINT
        inside_notify = types.SimpleNamespace(f_globals=vars(threading))  # the frame a signal interrupts there
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            request_stop(signal.SIGINT, inside_notify)  # not raised there (at once)...
            time.sleep(5)  # ...but here, once the signal comes again 10 ms later (or wherever the test is by then)
        assert 0.005 < time.monotonic() - start < 2
        with pytest.raises(KeyboardInterrupt):
            request_stop(signal.SIGINT, sys._getframe())
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def test_an_exception_mid_iteration_leaves_the_last_complete_iterations_checkpoint(script, tmp_path, monkeypatch):
    ppo = load_script(script)
    calls = []

    def gae_that_fails_in_iteration_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected")
        return compute_gae(*args, **kwargs)

    compute_gae = ppo.compute_gae
    monkeypatch.setattr(ppo, "compute_gae", gae_that_fails_in_iteration_3)
    monkeypatch.chdir(tmp_path)
    argv = [*tiny(script), "--total-timesteps", "100000", "--save-model", "--checkpoint-minutes", "0.0001"]
    monkeypatch.setattr(sys, "argv", [script, *argv])
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="injected"):
            ppo.main(tyro.cli(ppo.Args, args=argv))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        torch.set_num_threads(threads)
    (run_dir,) = run_dirs(tmp_path)
    checkpoint = torch.load(checkpoint_path(run_dir, script), weights_only=True)
    # iteration 3 had stepped its envs when it failed; the checkpoint claims the two finished iterations only
    assert checkpoint["iteration"] == 2
    assert checkpoint["global_step"] == scalars(run_dir)["losses/value_loss"][-1][0]


def test_non_finite_weights_stop_with_one_line_and_keep_the_last_checkpoint(script, trained, tmp_path):
    cwd, _, path, _ = trained
    shutil.copytree(cwd, tmp_path, dirs_exist_ok=True)
    path = os.path.join(tmp_path, os.path.relpath(path, cwd))
    checkpoint = torch.load(path, weights_only=True)
    for state in checkpoint["optimizer"]["state"].values():
        state["exp_avg_sq"].fill_(float("nan"))  # Adam's first step then writes nan into every weight
    torch.save(checkpoint, path)
    before = open(path, "rb").read()
    batch_size = checkpoint["global_step"] // checkpoint["iteration"]
    total = str(checkpoint["global_step"] + batch_size)  # the failing iteration is the last: it would be saved
    proc = run_script(script, ["--resume", path, "--total-timesteps", total], tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    iteration = checkpoint["iteration"] + 1
    assert (
        line
        == f"{script}: error: iteration {iteration}: a loss or weight is nan or inf; lower --learning-rate or --max-grad-norm"
    )
    assert open(path, "rb").read() == before


@pytest.mark.parametrize(
    "name, env_id",
    [
        ("ppo_discrete.py", "LunarLander-v3"),
        ("ppo_penalty.py", "LunarLander-v3"),
        ("ppo_continuous.py", "BipedalWalker-v3"),
        ("ppo_penalty_continuous.py", "BipedalWalker-v3"),
    ],
)
def test_box2d_tasks_run_after_the_install_command_and_a_missing_box2d_names_its_fix(name, env_id, monkeypatch):
    ppo = load_script(name)
    assert problem(ppo, ["--env-id", env_id]) is None
    for module in [m for m in sys.modules if m.startswith(("Box2D", "gymnasium.envs.box2d"))]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "Box2D", None)  # import Box2D now fails, as where it is not installed
    message = problem(ppo, ["--env-id", env_id])
    assert message.endswith("needs a package that is not installed: pip install Box2D==2.3.10"), message


@pytest.mark.parametrize("name", sorted(name for name in SCRIPTS if name != "ppo_atari.py"))
def test_an_atari_id_names_the_script_that_trains_on_it(name, tmp_path):
    # in a fresh process the ids are unknown (ale_py registers them on import); here they may be registered
    for env_id in ("ALE/Pong-v5", "PongNoFrameskip-v4"):
        message = problem(load_script(name), ["--env-id", env_id])
        assert message.startswith(f"--env-id {env_id} ") and message.endswith("; use ppo_atari.py"), message
    proc = run_script(name, ["--env-id", "ALE/Pong-v5"], tmp_path, check=False)
    assert (
        proc.returncode == 1
        and proc.stderr == f"{name}: error: --env-id ALE/Pong-v5 is an Atari game; use ppo_atari.py\n"
    )


def bad_inputs(script: str) -> list[tuple[list[str], str]]:
    wrong_env, wrong_env_hint = SCRIPTS[script]["wrong_env"]
    return [
        (["--env-id", "NoSuchEnv-v0"], "unknown --env-id"),
        (["--env-id", wrong_env], wrong_env_hint),
        (["--num-envs", "0"], "--num-envs"),
        (["--num-steps", "0"], "--num-steps"),
        (["--num-minibatches", "7"], "must divide"),
        (["--update-epochs", "0"], "--update-epochs"),
        (["--total-timesteps", "1"], "smaller than one batch"),
        (["--clip-coef", "-0.1"], "--clip-coef"),
        (["--gamma", "1.5"], "--gamma"),
        (["--gae-lambda", "-1"], "--gae-lambda"),
        (["--ent-coef", "-1"], "--ent-coef"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--max-grad-norm", "0"], "--max-grad-norm"),
        (["--target-kl", "0"], "--target-kl"),
        (["--eval-episodes", "-1"], "--eval-episodes"),
        (["--resume", "missing.pt"], "does not exist"),
        (["--eval-checkpoint", "not_a_checkpoint.pt"], "not a checkpoint"),
        (["--eval-checkpoint", "pickle_with_code.pt"], "not a checkpoint"),
        (["--eval-checkpoint", "other_script.pt"], "other.py"),
        (["--gamma", "nan"], "--gamma"),
        (["--learning-rate", "inf"], "--learning-rate"),
        (["--seed", "-1"], "--seed"),
        (["--num-threads", "0"], "--num-threads"),
        (["--exp-name", "a/b"], "--exp-name"),
        (["--eval-episodes", "0", "--eval-deterministic"], "--eval-deterministic needs"),
        (["--num-envs", "1", "--num-steps", "1", "--num-minibatches", "1"], "--norm-adv needs minibatches of 2"),
        (["--resume", "x.pt", "--eval-checkpoint", "x.pt"], "not both"),
    ]


@pytest.fixture
def bad_files(script, tmp_path, monkeypatch):
    """A folder with files that are not checkpoints of this script; the test runs in it."""
    (tmp_path / "not_a_checkpoint.pt").write_text("hello")
    torch.save({"script": "other.py", "model": {}}, tmp_path / "other_script.pt")
    torch.save({"script": script, "payload": tmp_path}, tmp_path / "pickle_with_code.pt")  # needs unpickling code
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_bad_argument_is_named_in_one_line(script, bad_files):
    ppo = load_script(script)
    assert problem(ppo, tiny(script)) is None
    for args, fragment in bad_inputs(script):
        message = problem(ppo, with_tiny(script, args))
        assert message is not None and fragment in message, (args, message)
        assert "\n" not in message, (args, message)
    assert sorted(os.listdir(bad_files)) == ["not_a_checkpoint.pt", "other_script.pt", "pickle_with_code.pt"]


@pytest.mark.parametrize("case", [0, 1, 17])  # unknown env, wrong action space, a file that is not a checkpoint
def test_bad_input_exits_non_zero_with_one_line_and_writes_nothing(script, bad_files, case):
    args, fragment = bad_inputs(script)[case]
    proc = run_script(script, with_tiny(script, args), bad_files, check=False)
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert "Traceback" not in message and len(message.splitlines()) == 1 and fragment in message, message
    assert message.startswith(f"{script}: error: ")
    assert not os.path.exists(bad_files / "runs")


def test_unparseable_flag_exits_non_zero_without_traceback(script, tmp_path):
    for args in (["--num-envs", "abc"], ["--no-such-flag"]):
        proc = run_script(script, args, tmp_path, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "--num-envs" in proc.stderr or "--no-such-flag" in proc.stderr


def test_same_seed_logs_identical_values(script, trained, tmp_path):
    _, trained_dir, _, _ = trained
    logs = []
    for seed in ("1", "2"):
        (tmp_path / seed).mkdir()
        run_script(script, [*tiny(script), "--seed", seed], tmp_path / seed)
        (run_dir,) = run_dirs(tmp_path / seed)
        logs.append({tag: values for tag, values in scalars(run_dir).items() if tag != "charts/SPS"})
    reference = {tag: values for tag, values in scalars(trained_dir).items() if tag != "charts/SPS"}
    assert logs[0] == reference  # seed 1, like the trained run (whose --save-model changes nothing logged)
    assert len(reference["losses/policy_loss"]) >= 2
    assert logs[1]["losses/policy_loss"] != reference["losses/policy_loss"]


def test_script_copied_alone_into_an_empty_folder_runs(script, tmp_path):
    shutil.copy(ROOT / script, tmp_path / script)
    run_script(str(tmp_path / script), [*tiny(script), "--eval-episodes", "0"], tmp_path)
    assert len(run_dirs(tmp_path)) == 1


def test_importing_the_script_does_nothing(script, tmp_path):
    code = f"import importlib.util as u; s = u.spec_from_file_location('m', {str(ROOT / script)!r}); "
    code += "m = u.module_from_spec(s); s.loader.exec_module(m); assert callable(m.main)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and os.listdir(tmp_path) == []


def test_capture_video_writes_mp4_of_env_0(script, tmp_path):
    run_script(script, [*tiny(script), "--capture-video", "--eval-episodes", "0"], tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    videos = glob.glob(str(tmp_path / "videos" / os.path.basename(run_dir) / "*.mp4"))
    assert videos and all(os.path.getsize(v) > 0 for v in videos)


@pytest.mark.parametrize("script", ["ppo_discrete.py", "ppo_continuous.py"])
def test_capture_video_records_env_0s_episodes(script, tmp_path, monkeypatch):
    """The videos are env 0's episodes, on gymnasium's capped cubic schedule (0, 1, 8, 27, ...): RecordVideo keeps
    the reset's frame and one per step, so a video has its episode's length + 1 frames, or its length (moviepy
    may drop the last frame: it writes n frames at f fps as a clip of duration n / f, rounded). Env 1's episodes
    are checked to differ in length by 2 or more in one video, so a recording of env 1 fails the check. Run
    in-process, with the vector env's steps recorded (ppo_atari.py records env 0 its own way: tests/test_atari.py)."""
    import imageio.v2 as imageio
    from gymnasium.utils.save_video import capped_cubic_video_schedule

    ppo, ended = load_script(script), []  # ended: per step, the envs whose episode ended at that step
    make_envs = ppo.make_envs

    def recorded_envs(*a, **kw):
        envs = make_envs(*a, **kw)
        step = envs.step

        def recorded_step(actions):
            result = step(actions)
            ended.append(result[2] | result[3])
            return result

        envs.step = recorded_step
        return envs

    monkeypatch.setattr(ppo, "make_envs", recorded_envs)
    monkeypatch.chdir(tmp_path)
    args = tyro.cli(ppo.Args, args=[*tiny(script), "--num-envs", "2", "--capture-video", "--eval-episodes", "0"])
    # main installs its signal handlers and sets torch's threads: both are restored for the next tests
    handlers, num_threads = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}, torch.get_num_threads()
    try:
        ppo.main(args)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        torch.set_num_threads(num_threads)
    ended = np.array(ended)
    assert ended.shape == (args.total_timesteps // 2, 2)
    lengths = [np.diff(np.flatnonzero(ended[:, i]) + 1, prepend=0) for i in (0, 1)]  # each env's whole episodes
    recorded = [k for k in range(min(map(len, lengths))) if capped_cubic_video_schedule(k)]
    assert recorded[:2] == [0, 1]
    assert any(abs(lengths[0][k] - lengths[1][k]) >= 2 for k in recorded)  # env 1's videos would differ
    (run_dir,) = run_dirs(tmp_path)
    for k in recorded:
        video = tmp_path / "videos" / os.path.basename(run_dir) / f"rl-video-episode-{k}.mp4"
        with imageio.get_reader(str(video), "ffmpeg") as reader:
            assert reader.count_frames() in (lengths[0][k] + 1, lengths[0][k]), (k, lengths)
