"""ppo_lstm.py's recurrent state, the places a recurrent PPO is most often wrong: the update replays the rollout
exactly, an episode start cuts memory and nothing else does, minibatches are whole sequences in time order from
their own initial state, the reset flag marks exactly each episode's first observation, and the memory is used (a
cue-recall task it learns where ppo_discrete.py stays at chance). The runs are in-process, on test envs whose
observations name their env and step."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SCRIPTS, load_script, problem, scalars
from test_claims import ONE_THREAD, run_dirs, run_main
from test_torchrun import kept, run_to_the_end, same_weights

SCRIPT = "ppo_lstm.py"


# ---- test envs ----
class Tagged(gym.Env):
    """Observations (env, serial, t): the env's number (its first reset's seed, distinct per env), the number of
    observations it returned before this one, and the step within the episode (0: the episode's first). Episodes
    last 2 to 6 steps, by env and episode; even ones terminate, odd ones are truncated. Actions do nothing."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.env, self.serial, self.episode = None, -1, -1

    def observation(self):
        self.serial += 1
        return np.array([self.env, self.serial, self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.env = seed if self.env is None else self.env
        self.episode, self.t = self.episode + 1, 0
        self.length = 2 + (self.env + self.episode) % 5
        return self.observation(), {}

    def step(self, action):
        self.t += 1
        ended = self.t == self.length
        return self.observation(), 1.0, ended and self.episode % 2 == 0, ended and self.episode % 2 == 1, {}


class CueRecall(gym.Env):
    """A cue (left or right) at the first step, BLANKS blank steps, then a query: the action taken at the query is
    rewarded +1 if it names the cue, -1 if not; nothing else is rewarded. One-hot observations: cue left, cue right,
    blank, query. Without memory the best is chance: a mean return of 0."""

    BLANKS = 2
    observation_space = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue, self.t = int(self.np_random.integers(2)), 0
        return np.eye(4, dtype=np.float32)[self.cue], {}

    def step(self, action):
        self.t += 1
        if self.t <= self.BLANKS:
            return np.eye(4, dtype=np.float32)[2], 0.0, False, False, {}
        if self.t == self.BLANKS + 1:
            return np.eye(4, dtype=np.float32)[3], 0.0, False, False, {}
        return np.eye(4, dtype=np.float32)[3], 1.0 if action == self.cue else -1.0, True, False, {}


gym.register("TaggedSteps-v0", entry_point=Tagged)
gym.register("CueRecall-v0", entry_point=CueRecall)

# 4 envs of 16 steps in 2 minibatches of 2 whole sequences, 3 iterations: every env starts episodes inside rollouts
# and carries one across each rollout's end
TAGGED = ["--env-id", "TaggedSteps-v0", "--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2"]
TAGGED += ["--total-timesteps", "192", "--eval-episodes", "0", *ONE_THREAD]


class NoStep(torch.optim.Adam):
    """Adam that never changes the weights: every minibatch of every epoch sees the rollout's weights."""

    def step(self, closure=None):
        return None


def recorded_run(tmp_path, frozen: bool = False) -> dict:
    """Runs ppo_lstm.py on TaggedSteps-v0 recording, per iteration: the rollout's single steps (x, done, state in,
    output, state out, log-prob), and the update's calls (x, initial state, done, log-prob, value)."""
    ppo = load_script(SCRIPT)
    seen = {"steps": [], "updates": [], "values": []}

    class Recorded(ppo.Agent):
        def get_states(self, x, lstm_state, done):
            hidden, state = super().get_states(x, lstm_state, done)
            rollout_step = len(x) == lstm_state[0].shape[1] and not getattr(self, "valuing", False)
            if torch.is_inference_mode_enabled() and rollout_step:  # not V(final obs) nor V(next obs)
                seen["steps"].append(dict(x=x.clone(), done=done.clone(), state_in=lstm_state, hidden=hidden))
                seen["steps"][-1]["state_out"] = state
                seen["agent"] = self
            return hidden, state

        def get_value(self, x, lstm_state, done):  # V(final obs), V(s_t) of the rollout, V(next obs)
            self.valuing = True
            try:
                value = super().get_value(x, lstm_state, done)
            finally:
                self.valuing = False
            call = dict(after_step=len(seen["steps"]) - 1, x=x.clone(), state=lstm_state, done=done, value=value)
            seen["values"].append(call)
            return value

        def get_action(self, x, action=None, deterministic=False):
            out = super().get_action(x, action, deterministic)
            if torch.is_inference_mode_enabled() and seen["steps"] and "logprob" not in seen["steps"][-1]:
                seen["steps"][-1]["logprob"] = out[1]
            return out

        def get_action_and_value(self, x, lstm_state, done, action=None, deterministic=False):
            out = super().get_action_and_value(x, lstm_state, done, action, deterministic)
            if torch.is_grad_enabled():  # the update
                call = dict(x=x.detach(), state=tuple(s.detach() for s in lstm_state), done=done.detach())
                seen["updates"].append(call | dict(logprob=out[1].detach(), value=out[3].detach().flatten()))
            return out

    ppo.Agent, adam = Recorded, torch.optim.Adam
    if frozen:
        torch.optim.Adam = NoStep  # the script reads torch.optim.Adam when it builds its optimizer
    try:
        run_main(ppo, SCRIPT, TAGGED, tmp_path)
    finally:
        torch.optim.Adam = adam
    return seen


def key(row: torch.Tensor) -> tuple[int, int]:
    """(env, serial): names one (t, env) sample of a TaggedSteps-v0 run."""
    return int(row[0]), int(row[1])


# ---- 1. replay ----
def test_the_update_replays_the_rollouts_log_probabilities_and_values_across_episode_boundaries(tmp_path):
    seen = recorded_run(tmp_path, frozen=True)  # the weights stay the rollout's through every epoch
    steps, updates = seen["steps"], seen["updates"]
    assert len(steps) == 3 * 16 and len(updates) == 3 * 4 * 2  # 3 iterations, 4 epochs of 2 minibatches
    assert sum(float(step["done"].sum()) for step in steps) >= 20  # episode boundaries inside the rollouts
    rollout = {}
    with torch.no_grad():
        for step in steps:  # V(s_t) from the state built step by step, as the rollout built it
            values = seen["agent"].critic(step["hidden"]).flatten()
            for i, row in enumerate(step["x"]):
                rollout[key(row)] = step["logprob"][i].item(), values[i].item()
    replays = [call for call in seen["values"] if len(call["x"]) == 64]  # the rollout's V(s_t), in one batch
    assert len(replays) == 3
    for call in replays:
        for i, row in enumerate(call["x"]):
            assert call["value"][i].item() == pytest.approx(rollout[key(row)][1], abs=1e-5)
    for call in updates:  # every minibatch of every epoch: one nn.LSTM call from the stored initial state
        for i, row in enumerate(call["x"]):
            logprob, value = rollout[key(row)]
            # float32 rounding of the same computation in another order: ~1e-7 of log-probabilities and values of
            # order 1
            assert call["logprob"][i].item() == pytest.approx(logprob, abs=1e-5)
            assert call["value"][i].item() == pytest.approx(value, abs=1e-5)
    logged = scalars(run_dirs(tmp_path)[0])  # ratio 1: the estimates of the KL are 0, nothing is clipped
    assert max(abs(v) for _, v in logged["losses/approx_kl"]) < 1e-6
    assert all(v == 0 for _, v in logged["losses/clipfrac"])


# ---- 2. an episode start cuts memory ----
def test_an_episode_start_cuts_memory_and_only_it(tmp_path):
    torch.manual_seed(0)
    agent = load_script(SCRIPT).Agent(3, 2)
    steps, n = 12, 3
    x = torch.randn(steps, n, 3)
    done = torch.zeros(steps, n)
    done[5, 0] = 1.0  # env 0's obs 5 starts an episode
    done[0, 2] = 1.0  # env 2's first obs starts one: its state from before counts for nothing; env 1: no start
    state = tuple(torch.randn(1, n, 64) for _ in range(2))
    changed = x.clone()
    changed[:4] += torch.randn(4, n, 3)  # every env's observations before step 4
    other_state = tuple(s + torch.randn_like(s) for s in state)  # another state before the sequence

    def outputs(obs, initial, replay):
        if replay:  # one nn.LSTM call over the sequence, as the update
            return agent.get_states(obs.flatten(0, 1), initial, done.flatten())[0].view(steps, n, -1)
        out = []  # step by step, as the rollout
        for t in range(steps):
            hidden, initial = agent.get_states(obs[t], initial, done[t])
            out.append(hidden)
        return torch.stack(out)

    with torch.no_grad():
        for replay in (True, False):
            base, obs_changed = outputs(x, state, replay), outputs(changed, state, replay)
            state_changed = outputs(x, other_state, replay)
            # env 0 after its episode start: the same (to float rounding, ~1e-7), whatever came before
            torch.testing.assert_close(base[5:, 0], obs_changed[5:, 0], rtol=0, atol=1e-6)
            # before the start the earlier observations count: step 4's own observation is unchanged
            assert not torch.allclose(base[4, 0], obs_changed[4, 0], atol=1e-4)
            # without a start a change carries to the last step, from the observations and from the state before
            assert not torch.allclose(base[-1, 1], obs_changed[-1, 1], atol=1e-4)
            assert not torch.allclose(base[-1, 1], state_changed[-1, 1], atol=1e-4)
            # env 2 starts an episode at its first obs: the state before the sequence is dropped
            torch.testing.assert_close(base[:, 2], state_changed[:, 2], rtol=0, atol=1e-6)


def test_the_state_carries_from_one_rollout_to_the_next_unless_an_episode_starts(tmp_path):
    seen = recorded_run(tmp_path)
    steps, updates = seen["steps"], seen["updates"]
    for iteration in (1, 2):
        last, first = steps[16 * iteration - 1], steps[16 * iteration]
        for s_out, s_in in zip(last["state_out"], first["state_in"], strict=True):
            assert torch.equal(s_out, s_in)  # the rollout goes on from where the last one ended
        assert (first["state_in"][0].abs().sum(-1) > 0).all()  # a real state, not zeros
        # the update of this iteration replays from that same state, env by env
        for call in updates[8 * iteration : 8 * iteration + 8]:
            envs = [int(e) for e in call["x"].view(16, -1, 3)[0, :, 0]]
            for j, env in enumerate(envs):
                column = [int(e) for e in first["x"][:, 0]].index(env)
                for s_call, s_in in zip(call["state"], first["state_in"], strict=True):  # h and c
                    assert torch.equal(s_call[0, j], s_in[0, column])
    # the first rollout starts from zeros with every env's first obs flagged as an episode start
    assert all(s.abs().sum() == 0 for s in steps[0]["state_in"]) and steps[0]["done"].eq(1).all()


def test_the_truncation_bootstrap_reads_the_state_at_the_end_of_the_ended_episode(tmp_path):
    seen = recorded_run(tmp_path)
    finals = [call for call in seen["values"] if len(call["x"]) < 4]  # V(final obs) of the truncated envs
    assert len(finals) >= 5
    for call in finals:
        step = seen["steps"][call["after_step"]]
        columns = [[int(e) for e in step["x"][:, 0]].index(int(row[0])) for row in call["x"]]
        assert all(int(row[2]) > 0 for row in call["x"])  # the ended episode's last obs, not the next one's first
        for s_call, s_step in zip(call["state"], step["state_out"], strict=True):
            assert torch.equal(s_call[0], s_step[0, columns])  # that env's state after the episode's last step
        assert not call["done"].any()  # not zeroed: the final obs continues its episode


def test_evaluation_carries_the_state_through_each_episode_and_zeroes_it_between(tmp_path):
    ppo = load_script(SCRIPT)
    seen = []

    class Recorded(ppo.Agent):
        def get_states(self, x, lstm_state, done):
            hidden, state = super().get_states(x, lstm_state, done)
            seen.append(dict(x=x.clone(), done=done.clone(), state_in=lstm_state, state_out=state))
            return hidden, state

    ppo.Agent = Recorded
    argv = ["--env-id", "TaggedSteps-v0", "--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2"]
    run_main(ppo, SCRIPT, [*argv, "--total-timesteps", "64", "--eval-episodes", "6", *ONE_THREAD], tmp_path)
    last_training = max(i for i, call in enumerate(seen) if len(call["x"]) > 1)
    evaluation = seen[last_training + 1 :]  # one env, one step at a time
    assert sum(int(call["x"][0, 2] == 0) for call in evaluation) == 6
    assert evaluation[0]["done"].item() == 1 and all(s.abs().sum() == 0 for s in evaluation[0]["state_in"])
    for previous, call in zip(evaluation, evaluation[1:], strict=False):
        assert call["done"].item() == (call["x"][0, 2] == 0)  # zeroed exactly where an episode starts
        assert all(torch.equal(a, b) for a, b in zip(call["state_in"], previous["state_out"], strict=True))


def test_v_of_the_next_obs_reads_the_state_after_the_rollouts_last_step(tmp_path):
    seen = recorded_run(tmp_path)
    replays = [i for i, call in enumerate(seen["values"]) if len(call["x"]) == 64]
    assert len(replays) == 3
    for i in replays:  # V(next obs) comes right after the rollout's V(s_t), both after its last step
        call, after_step = seen["values"][i + 1], seen["values"][i]["after_step"]
        assert len(call["x"]) == 4 and after_step % 16 == 15 and call["after_step"] == after_step
        last = seen["steps"][after_step]
        for s_call, s_last in zip(call["state"], last["state_out"], strict=True):
            assert torch.equal(s_call, s_last)
        assert torch.equal(call["done"], (call["x"][:, 2] == 0).float())  # zeroed where next obs starts an episode


def test_under_torchrun_each_process_replays_whole_sequences_of_its_own_envs(tmp_path, monkeypatch):
    ppo = load_script(SCRIPT)
    monkeypatch.setenv("WORLD_SIZE", "2")  # what check_args reads: 2 envs per process cannot make 2 minibatches
    message = problem(ppo, ["--num-envs", "2", "--num-minibatches", "2"])
    assert message is not None and "--num-envs must divide by 2 torchrun processes × --num-minibatches" in message
    assert problem(ppo, ["--num-envs", "4", "--num-minibatches", "2"]) is None
    monkeypatch.delenv("WORLD_SIZE")
    # 2 processes of 2 envs, a minibatch of 1 whole sequence each: the same weights on both
    args = ["--env-id", SCRIPTS[SCRIPT]["env_id"], "--num-envs", "4", "--num-steps", "32", "--num-minibatches", "2"]
    returncode, stderr = run_to_the_end(SCRIPT, [*args, "--total-timesteps", "256", "--eval-episodes", "0"], tmp_path)
    assert returncode == 0, stderr[-3000:]
    rank0, rank1 = kept(tmp_path)
    assert same_weights(rank0["model"], rank1["model"])
    assert len(scalars(run_dirs(tmp_path)[0])["charts/episodic_return"]) == rank0["episodes"] + rank1["episodes"]


# ---- 3. minibatches of whole sequences ----
def test_each_sample_is_used_once_per_epoch_in_time_order_from_its_own_initial_state(tmp_path):
    seen = recorded_run(tmp_path)
    steps, updates = seen["steps"], seen["updates"]
    for iteration in range(3):
        rollout = steps[16 * iteration : 16 * iteration + 16]
        samples = sorted(key(row) for step in rollout for row in step["x"])
        initial = {int(row[0]): [s[0, i] for s in rollout[0]["state_in"]] for i, row in enumerate(rollout[0]["x"])}
        for epoch in range(4):
            calls = updates[8 * iteration + 2 * epoch : 8 * iteration + 2 * epoch + 2]
            assert sorted(key(row) for call in calls for row in call["x"]) == samples  # each once
            for call in calls:
                x = call["x"].view(16, -1, 3)  # time-major: [t, env of the minibatch]
                assert x.shape[1] == 2  # 2 whole sequences of the 4
                for j in range(x.shape[1]):
                    assert len({int(e) for e in x[:, j, 0]}) == 1  # one env's sequence
                    serials = [int(s) for s in x[:, j, 1]]
                    assert serials == sorted(set(serials))  # 16 steps in time order (its own; all: see above)
                    for s_call, s_initial in zip(call["state"], initial[int(x[0, j, 0])], strict=True):
                        assert torch.equal(s_call[0, j], s_initial)  # its own state, h and c
                # the done flags travel with their steps
                t_in_episode = call["x"][:, 2]
                assert torch.equal(call["done"], (t_in_episode == 0).float())


# ---- 4. the reset flag ----
def test_the_reset_flag_marks_exactly_the_first_observation_of_each_episode(tmp_path):
    seen = recorded_run(tmp_path)
    flags, firsts = [], []
    for step in seen["steps"]:
        flags += step["done"].tolist()
        firsts += (step["x"][:, 2] == 0).float().tolist()
    assert flags == firsts and sum(firsts) >= 20


# ---- POPGym ----
@pytest.mark.parametrize("script", ["ppo_lstm.py", "ppo_discrete.py", "ppo_penalty.py"])
@pytest.mark.parametrize(
    "env_id, inputs",
    [
        ("popgym-RepeatPreviousEasy-v0", 4),  # Discrete(4): one-hot
        ("popgym-CountRecallEasy-v0", 4),  # MultiDiscrete([2, 2]): two one-hots
        ("popgym-AutoencodeEasy-v0", 6),  # Tuple(Discrete(2), Discrete(4))
    ],
)
def test_popgym_tasks_train_with_one_hot_observations(script, env_id, inputs, tmp_path):
    ppo = load_script(script)
    built = []

    class Observed(ppo.Agent):
        def __init__(self, obs_dim, *args, **kwargs):
            built.append(obs_dim)
            super().__init__(obs_dim, *args, **kwargs)

    ppo.Agent = Observed
    argv = ["--env-id", env_id, "--num-envs", "2", "--num-steps", "64", "--num-minibatches", "2"]
    run_main(ppo, script, [*argv, "--total-timesteps", "256", "--eval-episodes", "1", *ONE_THREAD], tmp_path)
    assert built == [inputs]
    logged = scalars(run_dirs(tmp_path)[0])
    assert len(logged["charts/episodic_return"]) >= 1 and len(logged["eval/episodic_return"]) == 1


# ---- 5. memory is used ----
def mean_return(script: str, tmp_path, total_timesteps: int, patch=None) -> float:
    ppo = load_script(script)
    if patch:
        patch(ppo)
    argv = ["--env-id", "CueRecall-v0", "--total-timesteps", str(total_timesteps), "--eval-episodes", "0"]
    run_main(ppo, script, [*argv, *ONE_THREAD], tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    returns = scalars(run_dir)["charts/episodic_return"]
    return float(np.mean([r for step, r in returns if step > 0.9 * total_timesteps]))


def reset_every_step(ppo):
    """ppo_lstm.py with the state zeroed before every step: no memory."""
    get_states = ppo.Agent.get_states
    ppo.Agent.get_states = lambda self, x, lstm_state, done: get_states(self, x, lstm_state, torch.ones_like(done))


@pytest.mark.learning
def test_the_lstm_learns_a_cue_recall_task_that_needs_memory(tmp_path):
    budget = 61440
    assert mean_return(SCRIPT, tmp_path / "lstm", budget) >= 0.9
    # the same budget without memory: chance, a mean return of 0 (± the noise of the last 10%'s ~1500 episodes)
    assert abs(mean_return("ppo_discrete.py", tmp_path / "mlp", budget)) < 0.15
    assert abs(mean_return(SCRIPT, tmp_path / "reset", budget, reset_every_step)) < 0.15
