"""PPO with the adaptive KL penalty for discrete action spaces (classic control), with GAE.

Implements Schulman et al. 2017, "Proximal Policy Optimization Algorithms"
(https://arxiv.org/abs/1707.06347), section 4: L^KLPEN (eq. 8) with the exact categorical KL,
and β ← β/2 if d < d_targ/1.5, β ← 2β if d > 1.5·d_targ after each update, where d is the mean
KL[π_old, π_θ] over the whole batch; with advantages from generalized advantage estimation
(Schulman et al. 2016, https://arxiv.org/abs/1506.02438, eq. 16).

Differs from ppo_discrete.py in: the policy loss (KL penalty, not clipping), the β update, π_old(·|s)
kept for the exact KL, --kl-coef/--kl-target/--adaptive-kl, the logs losses/kl_coef and losses/kl.
--clip-coef only clips the value update (--clip-vloss) here.

Symbols: N=num_envs, T=num_steps, K=update_epochs, γ=gamma, λ=gae_lambda, ε=clip_coef,
c1=vf_coef, c2=ent_coef, β=kl_coef, d_targ=kl_target, r_t(θ)=ratio, Â_t=advantages.
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
    env_id: str = "CartPole-v1"  # the id of the environment
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
    clip_coef: float = 0.2  # ε: the value clipping range of --clip-vloss (the surrogate is not clipped here)
    clip_vloss: bool = True  # if toggled, clip the value update to ±ε around the rollout's value (PPO baselines)
    ent_coef: float = 0.01  # c2: the coefficient of the entropy bonus
    vf_coef: float = 0.5  # c1: the coefficient of the value loss
    max_grad_norm: float = 0.5  # the maximum global norm of the gradient
    target_kl: float | None = None  # stop the epochs early once the approximate KL exceeds this (None: never)
    bootstrap_truncated: bool = True  # if toggled, bootstrap V(final obs) at a truncation (off: as CleanRL)
    # KL penalty specific arguments
    kl_coef: float = 1.0  # β₀: the initial coefficient of the KL penalty
    kl_target: float = 0.01  # d_targ: the KL the adaptive β steers towards
    adaptive_kl: bool = True  # if toggled, adapt β after each update (off: the paper's fixed-β variant)

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
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_dim)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, hidden_dim)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_dim)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, hidden_dim)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, n_actions), std=0.01),
        )

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action(self, x: torch.Tensor, action: torch.Tensor | None = None, deterministic: bool = False):
        """a ~ π(·|x) unless given (deterministic: the most likely a), log π(a|x) and the entropy of π(·|x)."""
        # the distribution written out: torch.distributions costs more than the MLP here (README, "Speed")
        logp = self.get_log_policy(x)
        if action is None and deterministic:
            action = logp.argmax(-1)
        elif action is None:  # Gumbel-max: argmax(log p - log E), E ~ Exp(1), is an exact draw from p
            action = (logp - torch.empty_like(logp).exponential_().log()).argmax(-1)
        logprob = logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return action, logprob, entropy

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None, deterministic: bool = False):
        return *self.get_action(x, action, deterministic), self.critic(x)

    def get_log_policy(self, x: torch.Tensor) -> torch.Tensor:
        """log π(·|x) of every action, (B, n_actions): what the exact KL needs."""
        return self.actor(x).log_softmax(-1)


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


def categorical_kl(old_logp: torch.Tensor, new_logp: torch.Tensor) -> torch.Tensor:
    """Exact KL[π_old, π_new] per state from (B, n_actions) normalized log-probabilities; (B,)."""
    return (old_logp.exp() * (old_logp - new_logp)).sum(-1)


def policy_loss(advantages: torch.Tensor, ratio: torch.Tensor, kl: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """PPO eq. 8, negated to be minimized: -E[r_t Â_t - β KL[π_old, π_θ]]."""
    return -(ratio * advantages - kl_coef * kl).mean()


def update_kl_coef(kl_coef: float, kl: float, kl_target: float) -> float:
    """PPO section 4: halve β when d < d_targ/1.5, double it when d > 1.5·d_targ, else keep it."""
    if kl < kl_target / 1.5:
        return kl_coef / 2
    if kl > kl_target * 1.5:
        return kl_coef * 2
    return kl_coef


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
    torch.set_num_threads(args.num_threads)
    cuda = torch.cuda.is_available() and args.cuda
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)  # the device of all_gather_object and of NCCL's collectives
    if world_size > 1:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    local_num_envs = args.num_envs // world_size  # this rank's share of the envs and of each (mini)batch
    local_batch_size, local_minibatch_size = args.batch_size // world_size, args.minibatch_size // world_size
    envs = make_envs(args.env_id, local_num_envs, args.capture_video and rank == 0, run_name)
    agent = Agent(envs.single_observation_space.shape[0], envs.single_action_space.n).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)  # eps of baselines
    resumable = dict(model=agent, optimizer=optimizer)  # all a checkpoint restores but the loop's place: add state here
    start_iteration, global_step, anneal_from = 1, 0, (1, args.learning_rate)  # lr: linear from anneal_from to 0
    kl_coef = args.kl_coef  # β, adapted after each update unless --no-adaptive-kl
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
        kl_coef = checkpoint["kl_coef"]

    # storage, in numpy (a row costs a tenth of a torch write); dones[t]: obs[t] is an episode's first obs
    obs = np.zeros((args.num_steps, local_num_envs) + envs.single_observation_space.shape, dtype=np.float32)
    actions = np.zeros((args.num_steps, local_num_envs), dtype=np.int64)
    logprobs, rewards, dones, final_values = np.zeros((4, args.num_steps, local_num_envs), dtype=np.float32)

    stop = handle_stop_signals()
    start_time = last_print = last_save = time.time()
    start_step, iteration = global_step, start_iteration - 1
    env_seeds = [(args.seed + global_step + rank * local_num_envs + i) % 2**31 for i in range(local_num_envs)]
    next_obs, _ = envs.reset(seed=env_seeds)  # seeds below 2**31, as every env (ale-py too) takes them
    next_done = np.zeros(local_num_envs, dtype=np.float32)
    try:
        for iteration in range(start_iteration, args.num_iterations + 1):
            frac = (args.num_iterations + 1 - iteration) / (args.num_iterations + 1 - anneal_from[0])
            optimizer.param_groups[0]["lr"] = frac * anneal_from[1] if args.anneal_lr else args.learning_rate
            episodes = []  # (global_step, return, length) of the episodes that end in this rollout

            with torch.inference_mode():
                for step in range(0, args.num_steps):
                    global_step += args.num_envs
                    obs[step] = next_obs
                    dones[step] = next_done
                    x = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
                    # V(s_t) comes after the rollout, in one batch from obs with these weights: an agent that
                    # changes during the rollout (a running normalizer inside it) must compute V(s_t) here instead
                    action, logprob, _ = agent.get_action(x)
                    actions[step], logprobs[step] = action.cpu().numpy(), logprob.cpu().numpy()
                    next_obs, reward, terminations, truncations, infos = envs.step(actions[step])
                    truncated = truncations & ~terminations  # TimeLimit also flags a terminal last step
                    rewards[step], final_values[step] = reward, 0.0  # the rewards as the env gave them
                    if args.bootstrap_truncated and truncated.any():
                        # a time limit is not a terminal state: GAE bootstraps V(final obs) at a truncation
                        final_obs = torch.as_tensor(np.stack(infos["final_obs"][truncated]), dtype=torch.float32)
                        final_values[step, truncated] = agent.get_value(final_obs.to(device)).flatten().cpu().numpy()
                    next_done = terminations | truncations
                    if "episode" in infos:
                        for i in np.flatnonzero(infos["_episode"]):
                            episodes.append((global_step, infos["episode"]["r"][i], infos["episode"]["l"][i]))

                values = agent.get_value(torch.as_tensor(obs, device=device).flatten(0, 1))  # (T·N, 1)
                values = values.cpu().numpy().reshape(dones.shape)
                next_value = agent.get_value(torch.as_tensor(next_obs, dtype=torch.float32, device=device))
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

            with torch.no_grad():  # π_old(·|s) for the exact KL: the weights are still the rollout's
                b_oldlogp = agent.get_log_policy(b_obs)
            update_stats = {}  # name -> its value in each minibatch, averaged when logged
            for epoch in range(args.update_epochs):
                b_inds = torch.randperm(local_batch_size, device=device)
                for start in range(0, local_batch_size, local_minibatch_size):
                    mb_inds = b_inds[start : start + local_minibatch_size]
                    _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
                    logratio = newlogprob - b_logprobs[mb_inds]
                    ratio = logratio.exp()
                    with torch.no_grad():  # KL[π_old, π_θ] estimators, http://joschu.net/blog/kl-approx.html
                        old_approx_kl = (-logratio).mean()
                        approx_kl = ((ratio - 1) - logratio).mean()
                        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()
                    mb_advantages = b_advantages[mb_inds]
                    if args.norm_adv:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                    kl = categorical_kl(b_oldlogp[mb_inds], agent.get_log_policy(b_obs[mb_inds]))
                    pg_loss = policy_loss(mb_advantages, ratio, kl, kl_coef)
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
            with torch.no_grad():  # d, on the whole batch after the update's epochs
                kl = categorical_kl(b_oldlogp, agent.get_log_policy(b_obs)).mean()
            if world_size > 1:  # d over every rank's batch: β stays the same on every rank
                dist.all_reduce(kl, op=dist.ReduceOp.AVG)
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
                writer.add_scalar("losses/kl_coef", kl_coef, global_step)
                writer.add_scalar("losses/kl", kl.item(), global_step)
                last_print = print_progress(args, envs, global_step, sps, last_print)
            if args.adaptive_kl:
                kl_coef = update_kl_coef(kl_coef, kl.item(), args.kl_target)
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
                save_checkpoint(model_path, resumable, args, iteration, global_step, kl_coef=kl_coef)
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
        ("kl_coef", lambda v: 0 <= v < math.inf, "0 or more and finite"),
        ("kl_target", lambda v: 0 < v < math.inf, "positive and finite"),
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
        (b % args.num_minibatches == 0, f"--num-minibatches must divide the batch size num_envs*num_steps = {b}"),
        (args.minibatch_size > world_size or not args.norm_adv, "--norm-adv needs minibatches of 2 or more samples"),
        (args.num_envs % world_size == 0, f"--num-envs must divide by the {world_size} torchrun processes"),
        (args.minibatch_size % world_size == 0, f"the minibatch size must divide by the {world_size} processes"),
        (world_size == 1 or not args.eval_checkpoint, "--eval-checkpoint runs in one process, without torchrun"),
        (args.total_timesteps >= b or args.eval_checkpoint, f"--total-timesteps is smaller than one batch ({b} steps)"),
        (args.eval_episodes > 0 or not args.eval_checkpoint, "--eval-checkpoint needs --eval-episodes 1 or more"),
        (not (args.eval_checkpoint and ignored), f"--eval-checkpoint does not use {ignored}; drop it"),
        (args.eval_episodes > 0 or not args.eval_deterministic, "--eval-deterministic needs --eval-episodes 1 or more"),
        (args.exp_name and os.sep not in args.exp_name, "--exp-name must be a non-empty name without '/'"),
        (args.save_model or "checkpoint_minutes" not in given, "--checkpoint-minutes needs --save-model"),
        (args.target_kl is None or args.update_epochs > 1, "--target-kl stops after an epoch: give --update-epochs 2+"),
        (args.kl_coef > 0 or not args.adaptive_kl, "--adaptive-kl doubles or halves β: start it above 0 (--kl-coef)"),
        (args.adaptive_kl or "kl_target" not in given, "--kl-target does nothing with --no-adaptive-kl"),
        (args.clip_vloss or "clip_coef" not in given, "--clip-coef does nothing with --no-clip-vloss here"),
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
    returns = []
    while len(returns) < args.eval_episodes:
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32, device=device)
            action, _, _ = agent.get_action(x, deterministic=args.eval_deterministic)
        obs, _, _, _, infos = envs.step(action.cpu().numpy())
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
