"""ppo_atari.py: life loss vs game over, the logged whole-game score, reward clipping, truncation,
uint8 storage, the Nature CNN, and the errors for ids that are not Atari games.

The env tests train in-process on a tiny budget with the script's vector env wrapped in a recorder
and compute_gae wrapped in a spy, then compare what the script fed to GAE with what the env did.
"""

import glob
import inspect
import math
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
import tyro
from ale_py.vector_env import AtariVectorEnv
from conftest import SCRIPTS, load_script, problem, run_script, scalars

SCRIPT = "ppo_atari.py"
# Asterix: an untrained policy ends a game in about 180-250 steps; 3 lives; a reward is 50 points,
# so the raw score, the clipped score and the first life's score all differ
GAME_ID, GAME = "ALE/Asterix-v5", "asterix"
NUM_ENVS, NUM_STEPS = 2, 128


@pytest.fixture(scope="module")
def ppo():
    return load_script(SCRIPT)


class Recorder(gym.vector.VectorWrapper):
    """Keeps a copy of everything the wrapped vector env returns."""

    def __init__(self, env, bound_args):
        super().__init__(env)
        self.bound_args, self.steps = bound_args, []

    def reset(self, **kwargs):
        obs, infos = self.env.reset(**kwargs)
        self.reset_obs, self.reset_lives, self.reset_frame = (
            obs.copy(),
            infos["lives"].copy(),
            infos["episode_frame_number"].copy(),
        )
        return obs, infos

    def step(self, actions):
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        step = {"actions": actions.copy(), "obs": obs.copy(), "rewards": rewards.copy()}
        step.update(terminations=terminations.copy(), truncations=truncations.copy(), lives=infos["lives"].copy())
        step.update(frame=infos["episode_frame_number"].copy(), final_obs=infos.get("final_obs", obs).copy())
        self.steps.append(step)
        return obs, rewards, terminations, truncations, infos


def train(ppo, workdir, args, max_num_frames_per_episode=None):
    """Runs ppo.main(args) in workdir; returns the recorder, the spied GAE calls, the agent and the logs."""
    recorders, gae_calls, agents = [], [], []
    make_vector_env, compute_gae, agent_class = ppo.AtariVectorEnv, ppo.compute_gae, ppo.Agent

    def recorded_vector_env(*a, **kw):
        if max_num_frames_per_episode is not None:
            kw["max_num_frames_per_episode"] = max_num_frames_per_episode
        bound = inspect.signature(make_vector_env).bind(*a, **kw)
        bound.apply_defaults()
        recorders.append(Recorder(make_vector_env(*a, **kw), bound.arguments))
        return recorders[-1]

    def spy_gae(rewards, values, dones, final_values, next_value, next_done, gamma, gae_lambda):
        advantages, returns = compute_gae(
            rewards, values, dones, final_values, next_value, next_done, gamma, gae_lambda
        )
        call = {"rewards": rewards, "values": values, "dones": dones, "final_values": final_values}
        call["next_done"] = next_done
        call = {key: np.array(value, copy=True) for key, value in call.items()}
        call.update(advantages=np.array(advantages, copy=True), gamma=gamma, model=agents[0].state_dict())
        call["model"] = {key: value.clone() for key, value in call["model"].items()}
        gae_calls.append(call)
        return advantages, returns

    class SpyAgent(agent_class):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.input_dtypes, self.update_batch_sizes = set(), set()
            agents.append(self)

        def get_action_and_value(self, x, action=None, deterministic=False):
            self.input_dtypes.add(("rollout" if action is None else "update", x.dtype))
            if action is not None:
                self.update_batch_sizes.add(len(x))
            return super().get_action_and_value(x, action, deterministic)

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    num_threads, cwd = torch.get_num_threads(), os.getcwd()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ppo, "AtariVectorEnv", recorded_vector_env)
        mp.setattr(ppo, "compute_gae", spy_gae)
        mp.setattr(ppo, "Agent", SpyAgent)
        os.chdir(workdir)
        try:
            ppo.main(tyro.cli(ppo.Args, args=args))
        finally:
            os.chdir(cwd)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            torch.set_num_threads(num_threads)
    (event_file,) = glob.glob(os.path.join(workdir, "runs", "**", "events.out.tfevents.*"), recursive=True)
    return {
        "recorder": recorders[0],
        "gae_calls": gae_calls,
        "agent": agents[0],
        "logs": scalars(os.path.dirname(event_file)),
    }


def stacked(run):
    """The recorded steps and the GAE inputs as (K, N) arrays over all K = iterations * T steps."""
    steps, calls = run["recorder"].steps, run["gae_calls"]
    out = {key: np.stack([step[key] for step in steps]) for key in steps[0]}
    out["prev_lives"] = np.concatenate([run["recorder"].reset_lives[None], out["lives"][:-1]])
    out["prev_obs"] = np.concatenate([run["recorder"].reset_obs[None], out["obs"][:-1]])
    out["prev_frame"] = np.concatenate([run["recorder"].reset_frame[None], out["frame"][:-1]])
    # dones[t] marks obs[t] as an episode's first, so the step t ended one iff dones[t + 1] (next_done after T-1)
    out["ended"] = np.concatenate([np.concatenate([c["dones"][1:], c["next_done"][None]]) for c in calls]) == 1
    for key in ("rewards", "values", "advantages", "final_values"):
        out["gae_" + key] = np.concatenate([c[key] for c in calls])
    assert len(steps) == len(out["ended"])  # every env step is a stored transition (SAME_STEP autoreset)
    return out


@pytest.fixture(scope="module")
def asterix(ppo, tmp_path_factory):
    args = ["--env-id", GAME_ID, "--num-envs", str(NUM_ENVS), "--num-steps", str(NUM_STEPS)]
    args += ["--total-timesteps", str(3 * NUM_ENVS * NUM_STEPS), "--eval-episodes", "0"]
    return train(ppo, tmp_path_factory.mktemp("asterix"), args)


def test_vector_env_has_the_standard_preprocessing(asterix):
    settings = asterix["recorder"].bound_args
    assert settings["game"] == GAME and settings["num_envs"] == NUM_ENVS
    expected = {
        "noop_max": 30,
        "frameskip": 4,
        "maxpool": True,
        "use_fire_reset": True,
        "img_height": 84,
        "img_width": 84,
        "grayscale": True,
        "stack_num": 4,
        "repeat_action_probability": 0.25,  # a v5 id: sticky actions, as gymnasium documents
        "full_action_space": False,
        "max_num_frames_per_episode": 108000,
        "episodic_life": False,  # ale-py's restarts the whole game at a life loss
        "reward_clipping": False,  # the logged score is raw; the script clips for training
        "autoreset_mode": gym.vector.AutoresetMode.SAME_STEP,
    }
    assert {key: settings[key] for key in expected} == expected


def test_a_life_loss_ends_the_training_episode_but_not_the_game(asterix):
    s = stacked(asterix)
    game_over = s["terminations"] | s["truncations"]
    life_lost = (s["lives"] < s["prev_lives"]) & ~game_over
    assert life_lost.any() and s["terminations"].any(), "the run must cover a life loss and a game over"
    # GAE sees an episode end exactly at every life loss and every game over
    np.testing.assert_array_equal(s["ended"], life_lost | game_over)
    # ... which cuts the bootstrap: the advantage of an episode's last step is r - V(s), nothing after it
    np.testing.assert_allclose(s["gae_advantages"][s["ended"]], (s["gae_rewards"] - s["gae_values"])[s["ended"]])
    for k, i in zip(*np.nonzero(life_lost), strict=True):
        # the same game goes on: one life less, 4 more frames, the frame stack slides by one frame
        assert s["lives"][k, i] == s["prev_lives"][k, i] - 1
        assert s["frame"][k, i] == s["prev_frame"][k, i] + 4
        np.testing.assert_array_equal(s["obs"][k, i, :-1], s["prev_obs"][k, i, 1:])
    for k, i in zip(*np.nonzero(s["terminations"]), strict=True):
        # a game over starts a new game: all lives back, the frame counter restarted
        assert s["lives"][k, i] == asterix["recorder"].reset_lives[i]
        assert s["frame"][k, i] < s["prev_frame"][k, i]
        assert not np.array_equal(s["obs"][k, i, :-1], s["final_obs"][k, i, 1:])


def test_training_rewards_are_the_signs_of_the_raw_rewards(asterix):
    s = stacked(asterix)
    assert not s["truncations"].any()  # no bootstrap folded in, in this run
    assert (s["rewards"] > 1).any(), "the run must hold rewards that clipping changes"
    np.testing.assert_array_equal(s["gae_rewards"], np.sign(s["rewards"]))


def test_logged_return_is_the_raw_score_of_the_whole_game(asterix):
    """Env 0's first game replayed by hand, action by action, in a fresh env built here."""
    steps = asterix["recorder"].steps
    env = AtariVectorEnv(
        GAME,
        1,
        repeat_action_probability=0.25,
        reward_clipping=False,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )  # v5's sticky actions: with the same seed they repeat the same actions as in the run
    obs, infos = env.reset(seed=1)  # the script seeds env i with --seed + i
    np.testing.assert_array_equal(obs[0], asterix["recorder"].reset_obs[0])
    score, clipped_score, first_life_score, lives = 0, 0, None, infos["lives"][0]
    for k, step in enumerate(steps):
        obs, rewards, terminations, truncations, infos = env.step(step["actions"][:1])
        np.testing.assert_array_equal(obs[0], step["obs"][0])  # the replay follows the run
        score, clipped_score = score + rewards[0], clipped_score + np.sign(rewards[0])
        if infos["lives"][0] < lives and first_life_score is None and not terminations[0]:
            first_life_score = score
        lives = infos["lives"][0]
        if terminations[0] or truncations[0]:
            break
    else:
        pytest.fail("env 0 never finished a game")
    env.close()
    assert score not in (clipped_score, first_life_score)  # the check below tells them apart
    global_step = (k + 1) * NUM_ENVS
    assert score in [value for step, value in asterix["logs"]["charts/episodic_return"] if step == global_step]
    assert k + 1 in [value for step, value in asterix["logs"]["charts/episodic_length"] if step == global_step]


def test_rollout_and_update_feed_uint8_pixels_to_the_network(asterix):
    # the update's minibatches are slices of the rollout storage, so uint8 there means uint8 storage
    assert asterix["agent"].input_dtypes == {("rollout", torch.uint8), ("update", torch.uint8)}


def test_time_limit_truncation_bootstraps_the_final_obs(ppo, tmp_path):
    frames = 400  # a game cut after about 100 agent steps
    args = ["--env-id", GAME_ID, "--num-envs", str(NUM_ENVS), "--num-steps", str(NUM_STEPS)]
    args += ["--total-timesteps", str(2 * NUM_ENVS * NUM_STEPS), "--eval-episodes", "0"]
    run = train(ppo, tmp_path, args, max_num_frames_per_episode=frames)
    s = stacked(run)
    assert s["truncations"].any()
    np.testing.assert_array_equal(s["ended"][s["truncations"]], True)
    # the rewards GAE gets are the env's (their signs), V(final obs) passed apart, at the truncated steps only
    np.testing.assert_array_equal(s["gae_rewards"], np.sign(s["rewards"]).astype(np.float32))
    expected = np.zeros_like(s["gae_final_values"])
    agent = ppo.Agent(4, run["agent"].actor.out_features)
    for k, i in zip(*np.nonzero(s["truncations"] & ~s["terminations"]), strict=True):
        call = run["gae_calls"][k // NUM_STEPS]
        agent.load_state_dict(call["model"])  # the weights that played this rollout
        with torch.no_grad():
            expected[k, i] = agent.get_value(torch.as_tensor(s["final_obs"][k, i : i + 1])).item()
        assert s["frame"][k, i] < frames  # the next obs starts a new game
    # values of order 0.01-1 from the same weights and pixels; 1e-5 covers float32 reordering in the CNN
    np.testing.assert_allclose(s["gae_final_values"], expected, rtol=1e-5, atol=1e-6)


def test_nature_cnn_shapes_init_and_pixel_scaling(ppo):
    torch.manual_seed(0)
    agent = ppo.Agent(4, 6)
    convs = [m for m in agent.network if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (4, 32, (8, 8), (4, 4)),
        (32, 64, (4, 4), (2, 2)),
        (64, 64, (3, 3), (1, 1)),
    ]
    linears = [m for m in agent.network if isinstance(m, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(64 * 7 * 7, 512)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in agent.network) == 4
    gains = [(layer, math.sqrt(2)) for layer in convs + linears] + [(agent.actor, 0.01), (agent.critic, 1.0)]
    for layer, gain in gains:
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # rows are orthogonal (fewer rows than columns)
        torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(w.shape[0]), atol=1e-5, rtol=1e-4)
        assert (layer.bias == 0).all()

    x = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    action, logprob, entropy, value = agent.get_action_and_value(x)
    assert action.shape == logprob.shape == entropy.shape == (5,) and value.shape == (5, 1)
    assert ((action >= 0) & (action < 6)).all()
    # pixels are scaled to [0, 1] inside the network; both heads share the trunk
    hidden = agent.network(x.float() / 255.0)
    torch.testing.assert_close(agent.get_value(x), agent.critic(hidden))
    with torch.no_grad():  # far from uniform, so that the check has teeth
        agent.actor.weight.mul_(300)
    actions = torch.tensor([0, 5, 2, 1, 3])
    _, logprob, entropy, _ = agent.get_action_and_value(x, actions)
    reference = torch.distributions.Categorical(logits=agent.actor(hidden))
    torch.testing.assert_close(logprob, reference.log_prob(actions))
    torch.testing.assert_close(entropy, reference.entropy())


def test_env_ids_that_are_not_atari_games_get_a_one_line_error(ppo, tmp_path):
    for env_id in ("BreakoutNoFrameskip-v4", "ALE/Breakout-v5", "PongNoFrameskip-v4"):
        assert problem(ppo, ["--env-id", env_id]) is None
    for env_id, fragment in [
        ("NoSuchGameNoFrameskip-v4", "unknown --env-id"),
        ("ALE/Breakot-v5", "Did you mean: `Breakout`"),
        ("CartPole-v1", "not an Atari game; use ppo_discrete.py"),
    ]:
        message = problem(ppo, ["--env-id", env_id])
        assert message is not None and fragment in message and "\n" not in message, message
    proc = run_script(SCRIPT, ["--env-id", "ALE/Breakot-v5"], tmp_path, check=False)
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{SCRIPT}: error: unknown --env-id 'ALE/Breakot-v5'")
    assert os.listdir(tmp_path) == []


def test_each_id_gets_its_own_protocol(ppo, monkeypatch):
    made = []
    monkeypatch.setattr(ppo, "AtariVectorEnv", lambda **kw: made.append(kw) or AtariVectorEnv(**kw))
    for env_id in ("ALE/Breakout-v5", "BreakoutNoFrameskip-v4"):
        ppo.make_envs(env_id, 1, False, "").close()
    assert [kw["repeat_action_probability"] for kw in made] == [0.25, 0.0]
    assert all(kw["frameskip"] == 4 and kw["max_num_frames_per_episode"] == 108000 for kw in made)
    message = problem(ppo, ["--env-id", "Breakout-v4"])  # gymnasium's v4 without NoFrameskip: 2 to 4 frames
    assert "pass BreakoutNoFrameskip-v4 or ALE/Breakout-v5" in message


def test_video_shows_the_rgb_screen_of_env_0_in_step_with_it(ppo, tmp_path, monkeypatch):
    from moviepy import VideoFileClip

    monkeypatch.chdir(tmp_path)
    envs = ppo.make_envs("ALE/Breakout-v5", 2, True, "run")
    envs.reset(seed=3)
    video = tmp_path / "videos" / "run" / "rl-video-episode-0.mp4"
    rng, game_over = np.random.default_rng(0), False
    for _ in range(5000):
        _, _, terminations, truncations, _ = envs.step(rng.integers(0, 4, size=2))
        game_over = terminations[0] or truncations[0]
        # the recorder ends its video when the copy of env 0 ends its game: at the same step as env 0
        assert video.exists() == game_over
        if game_over:
            break
    envs.close()
    assert game_over
    clip = VideoFileClip(str(video))
    assert tuple(clip.size) == (160, 210) and clip.get_frame(0).std() > 0  # the emulator's screen, not 84x84
    clip.close()


def test_ale_ids_do_not_nest_run_folders(tmp_path):
    args = ["--env-id", "ALE/Breakout-v5", "--num-envs", "2", "--num-steps", "16", "--total-timesteps", "32"]
    run_script(SCRIPT, [*args, "--eval-episodes", "0"], tmp_path)
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "*"))
    assert os.path.basename(run_dir).startswith("ALE-Breakout-v5__ppo_atari__1__")


def test_capture_video_records_env_0s_games(ppo, tmp_path):
    """--capture-video: the first video is env 0's first game (all its lives), one frame per agent step, so as
    many frames as the game has steps, or one less (moviepy may drop the last frame: it writes n frames at f fps as
    a clip of duration n / f, rounded). Env 1's first game is checked to be 2 or more steps longer or shorter,
    so that a video of env 1 fails the check."""
    import imageio.v2 as imageio

    args = ["--env-id", GAME_ID, *SCRIPTS[SCRIPT]["tiny"], "--capture-video", "--eval-episodes", "0"]
    run = train(ppo, tmp_path, args)
    s = stacked(run)
    game_over = s["terminations"] | s["truncations"]
    first_game = [int(np.flatnonzero(game_over[:, i])[0]) + 1 for i in (0, 1)]  # IndexError: no game over
    assert abs(first_game[0] - first_game[1]) >= 2, first_game
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "*"))
    video = tmp_path / "videos" / os.path.basename(run_dir) / "rl-video-episode-0.mp4"
    with imageio.get_reader(str(video), "ffmpeg") as reader:
        assert reader.count_frames() in (first_game[0], first_game[0] - 1), first_game


def test_sticky_actions_of_a_v5_id_show_in_its_games(ppo):
    """ALE/Breakout-v5 repeats the previous action instead of the new one with probability 0.25 at each frame
    (sticky actions); BreakoutNoFrameskip-v4 never does. Played through make_envs with the same seed and the same
    actions, each id replays its own game exactly, and the two ids' games part (here from the reset on: the
    reset's FIRE can stick to the NOOP before it, which changes when the ball is served)."""
    actions = np.random.default_rng(0).integers(0, 4, size=(100, 1))

    def play(env_id):
        envs = ppo.make_envs(env_id, 1, False, "")
        obs, _ = envs.reset(seed=5)
        observations, rewards = [obs], []
        for action in actions:
            obs, reward, _, _, _ = envs.step(action)
            observations.append(obs)
            rewards.append(reward)
        envs.close()
        return np.stack(observations), np.stack(rewards)

    sticky, sticky_again = play("ALE/Breakout-v5"), play("ALE/Breakout-v5")
    plain, plain_again = play("BreakoutNoFrameskip-v4"), play("BreakoutNoFrameskip-v4")
    for a, b in [(sticky, sticky_again), (plain, plain_again)]:
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(sticky[0], plain[0])
