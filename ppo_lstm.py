"""Recurrent PPO-Clip for discrete action spaces in partially observed tasks (POPGym), with GAE.

Implements Schulman et al. 2017, "Proximal Policy Optimization Algorithms"
(https://arxiv.org/abs/1707.06347): the clipped surrogate L^CLIP (eq. 7) inside the combined
objective L^CLIP+VF+S (eq. 9), with advantages from generalized advantage estimation
(Schulman et al. 2016, https://arxiv.org/abs/1506.02438, eq. 16).

Differs from ppo_discrete.py in: an LSTM between the observation encoder and the heads, shared by actor and critic
(as CleanRL's ppo_atari_lstm.py), its state zeroed where an episode starts and carried from one rollout to the next;
V(s_t) and the update replay each env's rollout from its initial state, a minibatch being whole env sequences.

Symbols: N=num_envs, T=num_steps, K=update_epochs, γ=gamma, λ=gae_lambda, ε=clip_coef,
c1=vf_coef, c2=ent_coef, r_t(θ)=ratio, Â_t=advantages.
"""

import functools
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields

import gymnasium as gym
import numpy as np
import popgym  # noqa: F401  (importing it registers POPGym's partially observed tasks, popgym-...)
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (before init_process_group: imported later, by Adam, it keeps the group)
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter


# ---- arguments ----
@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # the name of this experiment
    seed: int = 1  # seed of random, numpy, torch and the environments
    torch_deterministic: bool = True  # if toggled, `torch.backends.cudnn.deterministic=True`
    cuda: bool = True  # if toggled, cuda will be used when available
    num_threads: int = 1  # torch CPU threads (1 is fastest for small networks: no thread hand-off per layer)
    capture_video: bool = False  # if toggled, record videos of env 0 under `videos/{run_name}/`
    save_model: bool = False  # if toggled, save a checkpoint to `runs/{run_name}/{exp_name}.pt` at the end
    checkpoint_minutes: float = 5.0  # with --save-model, also save the checkpoint every this many minutes
    resume: str | None = None  # path of a checkpoint to continue, with its arguments and its TensorBoard run
    eval_checkpoint: str | None = None  # path of a checkpoint to evaluate on its env, without training
    eval_episodes: int = 10  # evaluation episodes after training, logged as eval/episodic_return (0: none)
    eval_deterministic: bool = False  # if toggled, evaluation takes the most likely action instead of sampling
    # Algorithm specific arguments
    env_id: str = "popgym-PositionOnlyCartPoleEasy-v0"  # the id of the environment
    total_timesteps: int = 500000  # total environment steps over all envs (rounded down to whole iterations)
    learning_rate: float = 2.5e-4  # the learning rate of the Adam optimizer
    num_envs: int = 4  # N: the number of parallel environments
    num_steps: int = 128  # T: the number of steps per env in each rollout
    anneal_lr: bool = True  # if toggled, the learning rate decays linearly to 0 over training
    gamma: float = 0.99  # γ: the discount factor
    gae_lambda: float = 0.95  # λ: the GAE parameter
    num_minibatches: int = 4  # the number of minibatches per epoch
    update_epochs: int = 4  # K: the number of epochs over the batch in each update
    norm_adv: bool = True  # if toggled, normalize Â_t within each minibatch
    clip_coef: float = 0.2  # ε: the surrogate clipping coefficient
    clip_vloss: bool = True  # if toggled, clip the value update to ±ε around the rollout's value (PPO baselines)
    ent_coef: float = 0.01  # c2: the coefficient of the entropy bonus
    vf_coef: float = 0.5  # c1: the coefficient of the value loss
    max_grad_norm: float = 0.5  # the maximum global norm of the gradient
    target_kl: float | None = None  # stop the epochs early once the approximate KL exceeds this (None: never)
    bootstrap_truncated: bool = True  # if toggled, bootstrap V(final obs) at a truncation (off: as CleanRL)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        return self.total_timesteps // self.batch_size


# ---- environment ----
def make_env(env_id: str, idx: int, capture_video: bool, run_name: str) -> gym.Env:
    if capture_video and idx == 0:
        env = gym.wrappers.RecordVideo(gym.make(env_id, render_mode="rgb_array"), f"videos/{run_name}")
    else:
        env = gym.make(env_id)
    return gym.wrappers.FlattenObservation(env)  # toy text's Discrete or Tuple observations become one-hot vectors


def make_envs(env_id: str, num_envs: int, capture_video: bool, run_name: str) -> gym.vector.VectorEnv:
    # evaluate() builds fresh envs here too: the state of a wrapper added here starts afresh there
    # SAME_STEP autoreset: the step that ends an episode returns the next episode's first obs, and the
    # ended one's last obs in info["final_obs"] (https://farama.org/Vector-Autoreset-Mode)
    thunks = [functools.partial(make_env, env_id, i, capture_video, run_name) for i in range(num_envs)]
    envs = gym.vector.SyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


# ---- network ----
def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden_dim: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden_dim)), nn.Tanh())
        self.lstm = nn.LSTM(hidden_dim, hidden_dim)  # one LSTM for actor and critic, as CleanRL's
        for name, param in self.lstm.named_parameters():
            nn.init.constant_(param, 0.0) if "bias" in name else nn.init.orthogonal_(param, 1.0)
        self.critic = nn.Sequential(
            layer_init(nn.Linear(hidden_dim, hidden_dim)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, hidden_dim)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(hidden_dim, hidden_dim)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, hidden_dim)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, n_actions), std=0.01),
        )

    def get_states(self, x: torch.Tensor, lstm_state: tuple, done: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """The LSTM's outputs (T·N, H) for x (T·N, obs_dim): T steps of N envs in time-major order, from lstm_state
        ((1, N, H) each), zeroed before each step where done = 1 (its obs is an episode's first); for one step (the
        rollout's), also the state after it."""
        hidden, n = self.encoder(x), lstm_state[0].shape[1]
        if len(hidden) == n:  # one step: the kernel of nn.LSTMCell on the LSTM's weights, cheaper than nn.LSTM
            h, c = ((1.0 - done).view(-1, 1) * s[0] for s in lstm_state)  # (N, H), zeroed where an episode starts
            h, c = torch.lstm_cell(hidden, (h, c), *self.lstm.all_weights[0])  # weights: w_ih, w_hh, b_ih, b_hh
            return h, (h[None], c[None])
        # T steps: each env's cut where an episode starts into segments, each a sequence from its own initial state
        # (the env's lstm_state, or 0 after a start), padded at their ends into one nn.LSTM call
        steps = len(hidden) // n
        starts = done.view(steps, n).T.flatten().clone()  # env-major
        starts[::steps] = 1
        segment = starts.cumsum(0).long() - 1  # of each env step, env-major
        first = starts.nonzero().flatten()  # where each segment begins
        step = torch.arange(len(starts), device=x.device) - first[segment]  # each env step's place in its segment
        padded = hidden.new_zeros(int(step.max()) + 1, len(first), hidden.shape[-1])
        padded[step, segment] = hidden.view(steps, n, -1).transpose(0, 1).flatten(0, 1)
        keep = (1.0 - done.view(steps, n)[0]).view(1, -1, 1)  # each env's first segment starts from its lstm_state
        zeros = padded.new_zeros(1, len(first), padded.shape[-1])
        output, _ = self.lstm(padded, tuple(zeros.index_copy(1, segment[::steps], keep * s) for s in lstm_state))
        return output[step, segment].view(n, steps, -1).transpose(0, 1).flatten(0, 1), None

    def get_value(self, x: torch.Tensor, lstm_state: tuple, done: torch.Tensor) -> torch.Tensor:
        return self.critic(self.get_states(x, lstm_state, done)[0])

    def get_action(self, x: torch.Tensor, action: torch.Tensor | None = None, deterministic: bool = False):
        """a ~ π(·|x) unless given (deterministic: the most likely a), log π(a|x) and the entropy of π(·|x)."""
        # the distribution written out: torch.distributions costs more than the MLP here (README, "Speed")
        logp = self.actor(x).log_softmax(-1)  # (B, n_actions), normalized log-probabilities
        if action is None and deterministic:
            action = logp.argmax(-1)
        elif action is None:  # Gumbel-max: argmax(log p - log E), E ~ Exp(1), is an exact draw from p
            action = (logp - torch.empty_like(logp).exponential_().log()).argmax(-1)
        logprob = logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return action, logprob, entropy

    def get_action_and_value(self, x, lstm_state: tuple, done, action=None, deterministic: bool = False):
        hidden, _ = self.get_states(x, lstm_state, done)
        return *self.get_action(hidden, action, deterministic), self.critic(hidden)


# ---- algorithm ----
def compute_gae(rewards, values, dones, final_values, next_value, next_done, gamma: float, gae_lambda: float):
    """GAE eq. 16 over a (T, N) rollout of numpy arrays; returns (advantages, returns), both (T, N).
    dones[t] = 1 means obs[t] is the first obs of a new episode (the step before it ended one), so the
    value after step t is cut by dones[t + 1]. final_values[t]: V(final obs) if step t was truncated, else 0."""
    nextnonterminal = 1.0 - np.concatenate((dones[1:], next_done[None]))  # (T, N)
    nextvalues = np.concatenate((values[1:], next_value[None]))  # (T, N)
    deltas = rewards + gamma * (nextvalues * nextnonterminal + final_values) - values  # TD residuals δ_t
    advantages = np.zeros_like(deltas)
    lastgaelam = 0.0
    for t in reversed(range(len(deltas))):
        advantages[t] = lastgaelam = deltas[t] + gamma * gae_lambda * nextnonterminal[t] * lastgaelam
    return advantages, advantages + values


def policy_loss(advantages: torch.Tensor, ratio: torch.Tensor, clip_coef: float) -> torch.Tensor:
    """PPO eq. 7, negated to be minimized: -E[min(r_t Â_t, clip(r_t, 1-ε, 1+ε) Â_t)]."""
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    return torch.max(pg_loss1, pg_loss2).mean()


def value_loss(newvalue, oldvalue, returns, clip_coef: float, clip_vloss: bool) -> torch.Tensor:
    """0.5 * squared error; clipped as in the PPO baselines: max of unclipped and clipped error."""
    v_loss_unclipped = (newvalue - returns) ** 2
    if not clip_vloss:
        return 0.5 * v_loss_unclipped.mean()
    v_clipped = oldvalue + torch.clamp(newvalue - oldvalue, -clip_coef, clip_coef)
    v_loss_clipped = (v_clipped - returns) ** 2
    return 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()


# ---- main ----
def main(args: Args) -> None:
    # under torchrun, one process per rank steps num_envs / world_size envs; ranks average their gradients
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        checkpoint = check_args(args)
    except ValueError as e:
        sys.exit(f"{os.path.basename(__file__)}: error: {e}" if rank == 0 else 1)  # said once, by rank 0
    run_name = f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    model_path = args.resume or f"runs/{run_name}/{args.exp_name}.pt"  # --resume rewrites the file it resumes
    run_dir = os.path.dirname(os.path.abspath(model_path))  # a resumed run goes on in its checkpoint's folder
    if args.resume:  # its videos go to videos/ in the working directory, beside the first run's, none overwritten
        run_name = f"{os.path.basename(run_dir)}/from-step-{checkpoint['global_step']}"

    random.seed(args.seed + rank)  # seed < 2**31 and rank < 2**31: every derived seed fits numpy's 32 bits
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.backends.cudnn.rnn.fp32_precision = "ieee"  # cuDNN's LSTM in float32 (not TF32), as the rollout's cell
    torch.set_num_threads(args.num_threads)
    cuda = torch.cuda.is_available() and args.cuda
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)  # the device of all_gather_object and of NCCL's collectives
    if world_size > 1:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    local_num_envs = args.num_envs // world_size  # this rank's share of the envs and of each (mini)batch
    local_batch_size, local_minibatch_envs = args.batch_size // world_size, local_num_envs // args.num_minibatches
    envs = make_envs(args.env_id, local_num_envs, args.capture_video and rank == 0, run_name)
    agent = Agent(envs.single_observation_space.shape[0], envs.single_action_space.n).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)  # eps of baselines
    resumable = dict(model=agent, optimizer=optimizer)  # all a checkpoint restores but the loop's place: add state here
    start_iteration, global_step, anneal_from = 1, 0, (1, args.learning_rate)  # lr: linear from anneal_from to 0
    if checkpoint is not None:
        try:  # a checkpoint of another network or optimizer is refused before anything is loaded or logged
            check_checkpoint(checkpoint, args, **resumable)
        except ValueError as e:
            sys.exit(f"{os.path.basename(__file__)}: error: {e}" if rank == 0 else 1)
        for name in resumable if args.resume else resumable.keys() - {"optimizer"}:  # eval: all but the optimizer
            resumable[name].load_state_dict(checkpoint[name])
    purge_step = checkpoint["global_step"] + 1 if args.resume else None  # drops what was logged after it (a crash)
    writer = SummaryWriter(run_dir, purge_step=purge_step) if rank == 0 else None  # rank 0 logs
    hyperparameters = "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
    if rank == 0:  # a resumed run logs its arguments at the step it resumes from, beside the first run's at 0
        writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{hyperparameters}", purge_step or 0)
    if world_size > 1:  # every rank starts from rank 0's weights
        for p in agent.parameters():
            dist.broadcast(p.detach(), src=0)
    if args.eval_checkpoint:
        envs.close()
        evaluate(agent, args, writer, device)
        writer.close()
        return
    if args.resume:
        start_iteration, global_step = checkpoint["iteration"] + 1, checkpoint["global_step"]
        anneal_from = checkpoint["iteration"], checkpoint["optimizer"]["param_groups"][0]["lr"]  # no jump up
        torch.set_rng_state(checkpoint["rng"])
        if device.type == "cuda" and checkpoint["cuda_rng"] is not None:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
        if rank > 0:  # the checkpoint holds rank 0's generator; the others draw new streams
            torch.manual_seed(args.seed + rank + global_step)

    # storage, in numpy (a row costs a tenth of a torch write); dones[t]: obs[t] is an episode's first obs
    obs = np.zeros((args.num_steps, local_num_envs) + envs.single_observation_space.shape, dtype=np.float32)
    actions = np.zeros((args.num_steps, local_num_envs), dtype=np.int64)
    logprobs, rewards, dones, final_values = np.zeros((4, args.num_steps, local_num_envs), dtype=np.float32)

    stop = handle_stop_signals()
    start_time = last_print = last_save = time.time()
    start_step, iteration = global_step, start_iteration - 1
    env_seeds = [(args.seed + global_step + rank * local_num_envs + i) % 2**31 for i in range(local_num_envs)]
    next_obs, _ = envs.reset(seed=env_seeds)  # seeds below 2**31, as every env (ale-py too) takes them
    next_done = np.ones(local_num_envs, dtype=np.float32)  # the first obs starts an episode: the state starts at 0
    lstm_state = tuple(torch.zeros(1, local_num_envs, agent.lstm.hidden_size, device=device) for _ in range(2))
    try:
        for iteration in range(start_iteration, args.num_iterations + 1):
            frac = (args.num_iterations + 1 - iteration) / (args.num_iterations + 1 - anneal_from[0])
            optimizer.param_groups[0]["lr"] = frac * anneal_from[1] if args.anneal_lr else args.learning_rate
            episodes = []  # (global_step, return, length) of the episodes that end in this rollout
            initial_lstm_state = tuple(s.clone() for s in lstm_state)  # where the update replays the rollout from

            with torch.inference_mode():
                for step in range(0, args.num_steps):
                    global_step += args.num_envs
                    obs[step] = next_obs
                    dones[step] = next_done
                    x, done = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in (next_obs, next_done))
                    # V(s_t) comes after, the rollout replayed from its initial state with these weights: an agent that
                    # changes during the rollout (a running normalizer inside it) must compute V(s_t) here instead
                    hidden, lstm_state = agent.get_states(x, lstm_state, done)
                    action, logprob, _ = agent.get_action(hidden)
                    actions[step], logprobs[step] = action.cpu().numpy(), logprob.cpu().numpy()
                    next_obs, reward, terminations, truncations, infos = envs.step(actions[step])
                    truncated = truncations & ~terminations  # TimeLimit also flags a terminal last step
                    rewards[step], final_values[step] = reward, 0.0  # the rewards as the env gave them
                    if args.bootstrap_truncated and truncated.any():
                        # a time limit is not a terminal state: GAE bootstraps V(final obs) at a truncation
                        final_obs = torch.as_tensor(np.stack(infos["final_obs"][truncated]), dtype=torch.float32)
                        ended = tuple(s[:, truncated] for s in lstm_state)  # its env's state at its episode's end
                        no_start = torch.zeros(len(final_obs), device=device)
                        final_value = agent.get_value(final_obs.to(device), ended, no_start)
                        final_values[step, truncated] = final_value.flatten().cpu().numpy()
                    next_done = terminations | truncations
                    if "episode" in infos:
                        for i in np.flatnonzero(infos["_episode"]):
                            episodes.append((global_step, infos["episode"]["r"][i], infos["episode"]["l"][i]))

                x, done = (torch.as_tensor(a, device=device).flatten(0, 1) for a in (obs, dones))
                values = agent.get_value(x, initial_lstm_state, done)  # (T·N, 1)
                values = values.cpu().numpy().reshape(dones.shape)
                x, done = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in (next_obs, next_done))
                next_value = agent.get_value(x, lstm_state, done)
                next_value = next_value.flatten().cpu().numpy()
            advantages, returns = compute_gae(
                rewards, values, dones, final_values, next_value, next_done, args.gamma, args.gae_lambda
            )

            b_obs = torch.as_tensor(obs, device=device).reshape((-1,) + envs.single_observation_space.shape)
            b_logprobs = torch.as_tensor(logprobs, device=device).reshape(-1)
            b_actions = torch.as_tensor(actions, device=device).reshape(-1)
            b_advantages = torch.as_tensor(advantages, device=device).reshape(-1)
            b_returns = torch.as_tensor(returns, device=device).reshape(-1)
            b_values = torch.as_tensor(values, device=device).reshape(-1)
            b_dones = torch.as_tensor(dones, device=device).reshape(-1)
            b_steps = torch.arange(local_batch_size, device=device).view(dones.shape)  # [t, env]: its index in b_

            update_stats = {}  # name -> its value in each minibatch, averaged when logged
            for epoch in range(args.update_epochs):
                env_inds = torch.randperm(local_num_envs, device=device)  # minibatches of whole env sequences
                for start in range(0, local_num_envs, local_minibatch_envs):
                    mb_envs = env_inds[start : start + local_minibatch_envs]
                    mb_inds = b_steps[:, mb_envs].flatten()  # their T steps in time order, replayed from their state
                    mb_state = tuple(s[:, mb_envs] for s in initial_lstm_state)
                    _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                        b_obs[mb_inds], mb_state, b_dones[mb_inds], b_actions[mb_inds]
                    )
                    logratio = newlogprob - b_logprobs[mb_inds]
                    ratio = logratio.exp()
                    with torch.no_grad():  # KL[π_old, π_θ] estimators, http://joschu.net/blog/kl-approx.html
                        old_approx_kl = (-logratio).mean()
                        approx_kl = ((ratio - 1) - logratio).mean()
                        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()
                    mb_advantages = b_advantages[mb_inds]
                    if args.norm_adv:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                    pg_loss = policy_loss(mb_advantages, ratio, args.clip_coef)
                    newvalue = newvalue.view(-1)
                    v_loss = value_loss(
                        newvalue, b_values[mb_inds], b_returns[mb_inds], args.clip_coef, args.clip_vloss
                    )
                    entropy_loss = entropy.mean()
                    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef  # PPO eq. 9

                    optimizer.zero_grad()
                    loss.backward()
                    if world_size > 1:  # the mean gradient over the ranks' minibatches: the same step on every rank
                        params = [p for p in agent.parameters() if p.requires_grad]  # not a frozen layer
                        for p in (p for p in params if p.grad is None):  # unused in this step here: 0
                            p.grad = torch.zeros_like(p)
                        flat = torch.cat([p.grad.flatten() for p in params])  # one all-reduce: a fixed latency each
                        dist.all_reduce(flat, op=dist.ReduceOp.AVG)
                        for p, averaged in zip(params, flat.split([p.numel() for p in params]), strict=True):
                            p.grad.copy_(averaged.view_as(p))  # into the gradient's own layout (channels_last)
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()
                    stats = dict(policy_loss=pg_loss, value_loss=v_loss, entropy=entropy_loss, clipfrac=clipfrac)
                    stats.update(old_approx_kl=old_approx_kl, approx_kl=approx_kl)
                    for name, value in stats.items():
                        update_stats.setdefault(name, []).append(value.item())

                if world_size > 1 and args.target_kl is not None:  # every rank stops its epochs together
                    dist.all_reduce(approx_kl, op=dist.ReduceOp.AVG)
                if args.target_kl is not None and approx_kl > args.target_kl:
                    break

            if world_size > 1:  # every rank's finished episodes reach rank 0's log
                gathered = [None] * world_size
                dist.all_gather_object(gathered, episodes)
                episodes = sorted(episode for rank_episodes in gathered for episode in rank_episodes)
            sps = int((global_step - start_step) / (time.time() - start_time))
            if rank == 0:
                for step, episodic_return, episodic_length in episodes:
                    writer.add_scalar("charts/episodic_return", episodic_return, step)
                    writer.add_scalar("charts/episodic_length", episodic_length, step)
                writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
                for name, per_minibatch in update_stats.items():
                    writer.add_scalar(f"losses/{name}", np.mean(per_minibatch), global_step)
                var_y = np.var(returns)
                explained_var = np.nan if var_y == 0 else 1 - np.var(returns - values) / var_y
                writer.add_scalar("losses/explained_variance", explained_var, global_step)
                writer.add_scalar("charts/SPS", sps, global_step)
                last_print = print_progress(args, envs, global_step, sps, last_print)
            finite = all(np.isfinite(v).all() for v in update_stats.values())
            finite = finite and all(p.isfinite().all() for p in agent.parameters())
            signum = stop["signal"] or 0
            if world_size > 1:  # every rank stops after the same iteration, for the same reason
                agreed = torch.tensor([signum, not finite], device=device)
                dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
                signum, finite = int(agreed[0]), not agreed[1]
            if not finite:  # stop before saving: the last checkpoint written keeps the last good weights
                problem = f"iteration {iteration}: a loss or weight is nan or inf"
                message = f"{os.path.basename(__file__)}: error: {problem}; lower --learning-rate or --max-grad-norm"
                sys.exit(message if rank == 0 else 1)
            if signum:  # a signal that arrives after this point stops the next iteration
                stop["signal"] = signum
            due = signum or iteration == args.num_iterations or time.time() - last_save > 60 * args.checkpoint_minutes
            if rank == 0 and args.save_model and due:
                save_checkpoint(model_path, resumable, args, iteration, global_step)
                last_save = time.time()
            if signum:
                break

        if rank == 0 and args.save_model:
            print(f"\nmodel saved to {model_path}")
        if rank == 0 and stop["signal"] is None and args.eval_episodes > 0:
            evaluate(agent, args, writer, device)
    except KeyboardInterrupt:  # a second Ctrl-C: abort now; the last checkpoint written stays as it was
        pass
    finally:
        envs.close()
        if rank == 0:
            writer.close()
        if world_size > 1:
            dist.destroy_process_group()  # joins gloo's threads now: one that outlives Python aborts the exit
    if stop["signal"] is not None:
        sys.exit(128 + stop["signal"])


# ---- plumbing ----
def check_args(args: Args) -> dict | None:
    """Raises ValueError naming the first bad argument and its fix; returns the checkpoint to load, if any."""
    checkpoint = load_checkpoint(args) if args.resume or args.eval_checkpoint else None
    ranges = [  # (fields, test of each value, what the value must be)
        ("total_timesteps num_envs num_steps num_minibatches update_epochs num_threads", lambda v: v > 0, "positive"),
        ("learning_rate clip_coef max_grad_norm checkpoint_minutes", lambda v: 0 < v < math.inf, "positive and finite"),
        ("ent_coef vf_coef eval_episodes", lambda v: 0 <= v < math.inf, "0 or more and finite"),
        ("gamma gae_lambda", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("seed", lambda v: 0 <= v < 2**31, "in [0, 2**31)"),
        ("target_kl", lambda v: v is None or 0 < v < math.inf, "positive and finite, or omitted"),
    ]
    for name, requirement in ((n, r) for names, ok, r in ranges for n in names.split() if not ok(getattr(args, n))):
        raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)} must be {requirement}")
    # what --eval-checkpoint reads; any other argument given with it would be silently ignored
    evaluation = {"exp_name", "seed", "torch_deterministic", "cuda", "num_threads", "env_id"}
    evaluation |= {"eval_checkpoint", "eval_episodes", "eval_deterministic"}
    given = command_line_fields(args)
    ignored = " ".join("--" + name.replace("_", "-") for name in sorted(given - evaluation))
    b, world_size = args.batch_size, int(os.environ.get("WORLD_SIZE", 1))  # torchrun sets WORLD_SIZE
    relations = [  # (holds, what is wrong and how to fix it)
        (args.num_envs % args.num_minibatches == 0, "--num-minibatches must divide --num-envs (whole sequences)"),
        (args.num_envs % world_size == 0, f"--num-envs must divide by the {world_size} torchrun processes"),
        (
            args.num_envs % (world_size * args.num_minibatches) == 0,
            f"--num-envs must divide by {world_size} torchrun processes × --num-minibatches (whole sequences)",
        ),
        (args.minibatch_size > world_size or not args.norm_adv, "--norm-adv needs minibatches of 2 or more samples"),
        (world_size == 1 or not args.eval_checkpoint, "--eval-checkpoint runs in one process, without torchrun"),
        (args.total_timesteps >= b or args.eval_checkpoint, f"--total-timesteps is smaller than one batch ({b} steps)"),
        (args.eval_episodes > 0 or not args.eval_checkpoint, "--eval-checkpoint needs --eval-episodes 1 or more"),
        (not (args.eval_checkpoint and ignored), f"--eval-checkpoint does not use {ignored}; drop it"),
        (args.eval_episodes > 0 or not args.eval_deterministic, "--eval-deterministic needs --eval-episodes 1 or more"),
        (args.exp_name and os.sep not in args.exp_name, "--exp-name must be a non-empty name without '/'"),
        (args.save_model or "checkpoint_minutes" not in given, "--checkpoint-minutes needs --save-model"),
        (args.target_kl is None or args.update_epochs > 1, "--target-kl stops after an epoch: give --update-epochs 2+"),
    ]
    if problem := next((problem for holds, problem in relations if not holds), None):
        raise ValueError(problem)
    if args.env_id.startswith("ALE/") or "NoFrameskip" in args.env_id:  # registered only once ale_py is imported
        raise ValueError(f"--env-id {args.env_id} is an Atari game; use ppo_atari.py")
    try:
        env = gym.make(args.env_id)
    except gym.error.DependencyNotInstalled as e:  # gymnasium's own hint for Box2D builds box2d-py from source
        fix = "pip install Box2D==2.3.10" if "box2d" in str(gym.spec(args.env_id).entry_point) else e
        raise ValueError(f"--env-id {args.env_id} needs a package that is not installed: {fix}") from None
    except gym.error.Error as e:
        raise ValueError(f"unknown --env-id {args.env_id!r} ({e}); pass a gymnasium id such as CartPole-v1") from None
    env.close()
    obs_space, action_space = env.observation_space, env.action_space
    if isinstance(action_space, gym.spaces.Box):
        raise ValueError(f"--env-id {args.env_id} has continuous actions; use ppo_continuous.py")
    if not isinstance(action_space, gym.spaces.Discrete) or not obs_space.is_np_flattenable:
        fix = "this script needs Discrete actions and observations that gymnasium can flatten"
        raise ValueError(f"--env-id {args.env_id} has {obs_space} obs and {action_space} actions; {fix}")
    return checkpoint


def load_checkpoint(args: Args) -> dict:
    """Loads --resume or --eval-checkpoint (weights_only: runs no code from the file). The arguments it was trained
    with fill in those not given (--eval-checkpoint: the env id); a given one that differs is an error, except
    those that do not change the training (the budget, saving, devices, logging)."""
    path, script = args.resume or args.eval_checkpoint, os.path.basename(__file__)
    if args.resume and args.eval_checkpoint:
        raise ValueError("pass --resume or --eval-checkpoint, not both")
    fix = f"pass a .pt file written by {script} --save-model"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path!r} does not exist; {fix}") from None
    except Exception:
        raise ValueError(f"{path!r} is not a checkpoint file; {fix}") from None
    owner = checkpoint.get("script") if isinstance(checkpoint, dict) else None
    if owner != script:
        raise ValueError(f"{path!r} is not a checkpoint of {script} (written by: {owner}); {fix}")
    trained, given = checkpoint["args"], command_line_fields(args)
    free = {"resume", "exp_name", "torch_deterministic", "cuda", "num_threads", "capture_video", "save_model"}
    free |= {"eval_checkpoint", "checkpoint_minutes", "eval_episodes", "eval_deterministic", "total_timesteps"}
    names = ["env_id"] if args.eval_checkpoint else [f.name for f in fields(args)]
    for name in names:
        flag = "--" + name.replace("_", "-")
        if name not in trained and name not in given | free:  # an argument added after the checkpoint was written
            raise ValueError(f"{path!r} was written without {flag}: give {flag} to resume it")
        if name in trained and name not in given:
            setattr(args, name, trained[name])
        elif name in trained and getattr(args, name) != trained[name] and name not in free:
            raise ValueError(f"{flag} {getattr(args, name)} conflicts with {path!r}'s {flag} {trained[name]}; drop it")
    if args.resume and checkpoint["iteration"] >= args.num_iterations:
        raise ValueError(f"{path!r} holds {checkpoint['global_step']} steps; raise --total-timesteps to continue")
    return checkpoint


def check_checkpoint(checkpoint: dict, args: Args, model: nn.Module, optimizer, **others) -> None:
    """Raises ValueError unless the checkpoint holds all of main's resumable and fits what this code builds."""
    if missing := sorted({"model", "optimizer", *others} - checkpoint.keys()):  # state added after it was written
        raise ValueError(f"the checkpoint has no {missing}, which this script restores; train without it")
    ours, saved = ({k: tuple(v.shape) for k, v in sd.items()} for sd in (model.state_dict(), checkpoint["model"]))
    if ours != saved:
        changed = sorted(set(ours.items()) ^ set(saved.items()))[:2]
        raise ValueError(f"the checkpoint's network differs from this script's in {changed}; train without it")
    ours, saved = ([{**g, "params": len(g["params"]), "lr": 0} for g in state.get("param_groups", [])]  # lr: scheduled
                   for state in (optimizer.state_dict(), checkpoint["optimizer"]))  # fmt: skip
    if args.resume and ours != saved:  # another class shows in its settings (AdamW: decoupled_weight_decay)
        changed = {k: (s.get(k), o[k]) for o, s in zip(ours, saved, strict=False) for k in o if s.get(k) != o[k]}
        raise ValueError(f"the checkpoint's optimizer settings differ (checkpoint, this code): {changed or saved}")


def save_checkpoint(path, resumable: dict, args: Args, iteration: int, global_step: int, **state) -> None:
    """Writes each resumable's state_dict(), the loop's place and torch's RNG (the one drawn from); state: extras."""
    checkpoint = {name: obj.state_dict() for name, obj in resumable.items()} | dict(script=os.path.basename(__file__))
    checkpoint.update(args=asdict(args), iteration=iteration, global_step=global_step, rng=torch.get_rng_state())
    device = next(resumable["model"].parameters()).device
    checkpoint["cuda_rng"] = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    torch.save({**checkpoint, **state}, path + ".tmp")
    os.replace(path + ".tmp", path)  # a kill mid-save never leaves a half-written checkpoint


def command_line_fields(args: Args) -> set[str]:
    """The Args fields named on the command line: tyro's result does not tell a default from a given value.
    Called from Python (main(Args(...)) in another program), the fields that differ from their defaults."""
    if os.path.basename(sys.argv[0]) != os.path.basename(__file__):
        return {f.name for f in fields(args) if getattr(args, f.name) != f.default}
    flags = {arg[2:].split("=")[0].replace("-", "_") for arg in sys.argv[1:] if arg.startswith("--")}
    return {f.name for f in fields(Args) if f.name in flags or "no_" + f.name in flags}


def evaluate(agent: Agent, args: Args, writer: SummaryWriter, device) -> list[float]:
    """Plays --eval-episodes episodes in a fresh env, logs their undiscounted returns and returns them."""
    envs = make_envs(args.env_id, 1, False, "")
    obs, _ = envs.reset(seed=args.seed)
    returns, done = [], torch.ones(1, device=device)  # the state carried through an episode, zeroed between them
    lstm_state = tuple(torch.zeros(1, 1, agent.lstm.hidden_size, device=device) for _ in range(2))
    while len(returns) < args.eval_episodes:
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32, device=device)
            hidden, lstm_state = agent.get_states(x, lstm_state, done)
            action, _, _ = agent.get_action(hidden, deterministic=args.eval_deterministic)
        obs, _, terminations, truncations, infos = envs.step(action.cpu().numpy())
        done = torch.as_tensor(terminations | truncations, dtype=torch.float32, device=device)
        if "episode" in infos:
            writer.add_scalar("eval/episodic_return", infos["episode"]["r"][0], len(returns))
            returns.append(float(infos["episode"]["r"][0]))
    envs.close()
    print(f"\neval: return {np.mean(returns):.2f} ± {np.std(returns):.2f} over {len(returns)} episodes")
    return returns


def handle_stop_signals() -> dict:
    """SIGINT or SIGTERM: stop after this iteration (then save, flush, close); a second Ctrl-C: abort now."""
    stop = {"signal": None}

    def request_stop(signum, frame):
        if stop["signal"] == signal.SIGINT == signum:  # a second Ctrl-C: abort, but not mid-lock in threading or queue
            if frame and frame.f_globals["__name__"] in ("threading", "queue"):  # (can hang the log writer): in 10 ms
                return threading.Timer(0.01, signal.pthread_kill, [threading.main_thread().ident, signum]).start()
            raise KeyboardInterrupt
        elif stop["signal"] is None:  # not a later one, e.g. torchrun's SIGTERM after the Ctrl-C that reached all
            stop["signal"] = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this iteration (Ctrl-C again to abort)", flush=True)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def print_progress(args: Args, envs, global_step: int, sps: int, last_print: float) -> float:
    """One line, refreshed 4 times a second on a terminal and every 10 s into a log; returns when it printed."""
    now, tty, total = time.time(), sys.stdout.isatty(), args.num_iterations * args.batch_size
    if now - last_print < (0.25 if tty else 10.0) and global_step < total:
        return last_print
    mean_return = np.mean(envs.return_queue) if envs.return_queue else float("nan")
    eta = time.strftime("%H:%M:%S", time.gmtime((total - global_step) / max(sps, 1)))
    line = f"step {global_step:>9}/{total} | return {mean_return:8.2f} | SPS {sps:>6} | ETA {eta}"
    print(line, end="\r" if tty else "\n", flush=True)
    return now


# ---- entry point ----
if __name__ == "__main__":
    main(tyro.cli(Args))
