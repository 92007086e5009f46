"""PPO-Clip on Atari from pixels, with GAE.

Implements Schulman et al. 2017, "Proximal Policy Optimization Algorithms"
(https://arxiv.org/abs/1707.06347): the clipped surrogate L^CLIP (eq. 7) inside the combined
objective L^CLIP+VF+S (eq. 9), with advantages from generalized advantage estimation
(Schulman et al. 2016, https://arxiv.org/abs/1506.02438, eq. 16), on the Atari setup of the
PPO paper (section 6.4) with the preprocessing of Mnih et al. 2015, "Human-level control through
deep reinforcement learning" (DQN Nature).

Differs from ppo_discrete.py in: pixels: ale-py's vector env with the standard Atari preprocessing
(a life loss ends a training episode, the logged return is the whole game's raw score, rewards
clipped to their sign for training), the Nature CNN shared by policy and value heads, uint8 rollout
storage, minibatch gradients accumulated over chunks (--grad-chunks, for memory), Atari defaults.

Symbols: N=num_envs, T=num_steps, K=update_epochs, γ=gamma, λ=gae_lambda, ε=clip_coef,
c1=vf_coef, c2=ent_coef, r_t(θ)=ratio, Â_t=advantages.
"""

import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro
from ale_py.vector_env import AtariVectorEnv  # importing ale_py registers the Atari ids in gymnasium
from gymnasium.utils.save_video import capped_cubic_video_schedule, save_video
from torch.utils.tensorboard import SummaryWriter


# ---- arguments ----
@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of random, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    num_threads: int = 2
    """torch CPU threads (the CNN update splits across cores: 1.6x the SPS of 1 thread on 2 cores)"""
    capture_video: bool = False
    """if toggled, record videos of env 0 under `videos/{run_name}/`"""
    save_model: bool = False
    """if toggled, save a checkpoint to `runs/{run_name}/{exp_name}.pt` at the end (and on Ctrl-C)"""
    resume: str | None = None
    """path of a checkpoint of this script to continue training from"""
    eval_checkpoint: str | None = None
    """path of a checkpoint of this script to evaluate, without training"""
    eval_episodes: int = 10
    """number of evaluation episodes after training, logged as eval/episodic_return (0: none)"""
    eval_deterministic: bool = False
    """if toggled, evaluation takes the most likely action instead of sampling"""

    # Algorithm specific arguments
    env_id: str = "BreakoutNoFrameskip-v4"
    """the gymnasium id of the Atari game (ALE/Breakout-v5 works too: only the game is taken from it)"""
    total_timesteps: int = 10000000
    """total environment steps of training, over all envs"""
    learning_rate: float = 2.5e-4
    """the learning rate of the Adam optimizer"""
    num_envs: int = 8
    """N: the number of parallel environments"""
    num_steps: int = 128
    """T: the number of steps per env in each rollout"""
    anneal_lr: bool = True
    """if toggled, the learning rate decays linearly to 0 over training"""
    gamma: float = 0.99
    """γ: the discount factor"""
    gae_lambda: float = 0.95
    """λ: the GAE parameter"""
    num_minibatches: int = 4
    """the number of minibatches per epoch"""
    update_epochs: int = 4
    """K: the number of epochs over the batch in each update"""
    norm_adv: bool = True
    """if toggled, normalize Â_t within each minibatch"""
    clip_coef: float = 0.1
    """ε: the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """if toggled, clip the value update to ±ε around the rollout's value (PPO baselines)"""
    ent_coef: float = 0.01
    """c2: the coefficient of the entropy bonus"""
    vf_coef: float = 0.5
    """c1: the coefficient of the value loss"""
    max_grad_norm: float = 0.5
    """the maximum global norm of the gradient"""
    target_kl: float | None = None
    """stop the update's epochs early once the approximate KL exceeds this (None: never)"""
    bootstrap_truncated: bool = True
    """if toggled, bootstrap V(final obs) at a time-limit truncation (off: CleanRL's behaviour)"""

    # Atari specific arguments
    grad_chunks: int = 2
    """split each minibatch into this many chunks (sizes differing by at most 1) and add up their gradients:
    the same update, with one chunk's activations in memory at a time (1: no split)"""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        return self.total_timesteps // self.batch_size


def load_checkpoint(path: str, device: torch.device | str = "cpu") -> dict:
    """Loads a checkpoint of this script without executing code from the file (weights_only)."""
    script = os.path.basename(__file__)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist; pass the path of a .pt file written by --save-model")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception:
        raise ValueError(
            f"{path!r} is not a checkpoint file; pass a .pt file written by {script} --save-model"
        ) from None
    if not isinstance(checkpoint, dict) or "script" not in checkpoint:
        raise ValueError(f"{path!r} is not a checkpoint of {script}; pass a .pt file written by {script} --save-model")
    if checkpoint["script"] != script:
        raise ValueError(f"{path!r} is a checkpoint of {checkpoint['script']}, not {script}; load it with that script")
    return checkpoint


def check_args(args: Args) -> str | None:
    """Returns what is wrong with the arguments, with the fix, or None; builds no env, writes nothing."""
    checks = [
        (args.total_timesteps > 0, "--total-timesteps must be positive"),
        (args.num_envs > 0, "--num-envs must be positive"),
        (args.num_steps > 0, "--num-steps must be positive"),
        (args.num_minibatches > 0, "--num-minibatches must be positive"),
        (args.update_epochs > 0, "--update-epochs must be positive"),
        (args.num_threads > 0, "--num-threads must be positive"),
        (args.eval_episodes >= 0, "--eval-episodes must be 0 or more"),
        (
            args.num_envs * args.num_steps % max(args.num_minibatches, 1) == 0,
            f"--num-minibatches {args.num_minibatches} must divide the batch size "
            f"num_envs*num_steps = {args.num_envs * args.num_steps}",
        ),
        (
            args.num_minibatches <= args.num_envs * args.num_steps,
            "--num-minibatches must not exceed the batch size num_envs*num_steps",
        ),
        (
            args.eval_checkpoint is not None or args.total_timesteps >= args.num_envs * args.num_steps,
            f"--total-timesteps {args.total_timesteps} is smaller than one batch "
            f"(num_envs*num_steps = {args.num_envs * args.num_steps}); raise it or shrink the batch",
        ),
        (args.learning_rate > 0, "--learning-rate must be positive"),
        (0 <= args.gamma <= 1, "--gamma must be in [0, 1]"),
        (0 <= args.gae_lambda <= 1, "--gae-lambda must be in [0, 1]"),
        (args.clip_coef > 0, "--clip-coef must be positive"),
        (args.ent_coef >= 0, "--ent-coef must be 0 or more"),
        (args.vf_coef >= 0, "--vf-coef must be 0 or more"),
        (args.max_grad_norm > 0, "--max-grad-norm must be positive"),
        (
            0 < args.grad_chunks <= args.num_envs * args.num_steps // max(args.num_minibatches, 1),
            f"--grad-chunks must be between 1 and the minibatch size num_envs*num_steps/num_minibatches "
            f"= {args.num_envs * args.num_steps // max(args.num_minibatches, 1)}",
        ),
        (args.target_kl is None or args.target_kl > 0, "--target-kl must be positive (or omitted)"),
        (args.resume is None or args.eval_checkpoint is None, "pass --resume or --eval-checkpoint, not both"),
        (args.eval_checkpoint is None or args.eval_episodes > 0, "--eval-checkpoint needs --eval-episodes 1 or more"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    try:
        gym.spec(args.env_id)
    except gym.error.Error as e:
        return f"unknown --env-id {args.env_id!r} ({e}); pass a gymnasium Atari id such as BreakoutNoFrameskip-v4"
    problem = check_env_spaces(args.env_id)
    if problem:
        return problem
    for path in (args.resume, args.eval_checkpoint):
        if path is not None:
            try:
                checkpoint = load_checkpoint(path)
            except ValueError as e:
                return str(e)
            if checkpoint["args"]["env_id"] != args.env_id:
                return f"{path!r} was trained on {checkpoint['args']['env_id']}; pass --env-id {checkpoint['args']['env_id']}"
            trained = checkpoint["args"]
            if args.resume and (trained["num_envs"], trained["num_steps"]) != (args.num_envs, args.num_steps):
                return (
                    f"{path!r} was trained with --num-envs {trained['num_envs']} --num-steps "
                    f"{trained['num_steps']}; resume with the same sizes"
                )
            if args.resume and set(checkpoint["optimizer"]) != {"step", "exp_avg", "exp_avg_sq"}:
                return (
                    f"{path!r} holds optimizer state of an older version of this script; "
                    f"evaluate it with --eval-checkpoint, or train without --resume"
                )
            if args.resume and checkpoint["iteration"] >= args.num_iterations:
                return (
                    f"{path!r} already holds {checkpoint['global_step']} steps; "
                    f"raise --total-timesteps above that to continue training"
                )
    return None


# ---- environment ----
def check_env_spaces(env_id: str) -> str | None:
    """Returns why this script cannot train on env_id, naming the script that can, or None."""
    if gym.spec(env_id).entry_point != "ale_py.env:AtariEnv":
        return f"--env-id {env_id} is not an Atari game; use ppo_discrete.py (ppo_continuous.py for continuous actions)"
    return None


def make_envs(env_id: str, num_envs: int, capture_video: bool, run_name: str) -> gym.vector.VectorEnv:
    # The standard preprocessing (DQN Nature; Machado et al. 2018, https://arxiv.org/abs/1709.06009),
    # done by ale-py in C++ threads: up to 30 no-op starts, each action repeated for 4 frames with the
    # max of the last two, FIRE at reset where the game needs it, 84x84 grayscale, the last 4 frames
    # stacked, no sticky actions, the minimal action set, a game cut at 108000 frames (30 minutes).
    # Rewards stay raw, so that the logged return is the game's score; training clips them.
    # episodic_life stays off: ale-py's restarts the whole game at every life loss (ale-py 0.12.1);
    # main() ends the training episode at a life loss instead, and the game goes on.
    # SAME_STEP autoreset: the step that ends an episode returns the next episode's first obs and
    # the ended one's last obs in info["final_obs"]. Every stored transition is then a real one
    # (NEXT_STEP, ale-py's default, would interleave a no-op reset step), and a truncation's final
    # obs is at hand to bootstrap in the same step. https://farama.org/Vector-Autoreset-Mode
    envs = AtariVectorEnv(
        gym.spec(env_id).kwargs["game"],
        num_envs,
        noop_max=30,
        frameskip=4,
        maxpool=True,
        use_fire_reset=True,
        img_height=84,
        img_width=84,
        grayscale=True,
        stack_num=4,
        repeat_action_probability=0.0,
        full_action_space=False,
        max_num_frames_per_episode=108000,
        episodic_life=False,
        reward_clipping=False,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    if capture_video:
        # gymnasium's RecordVideo needs render(), which this vector env lacks: env 0's games are
        # recorded from its observations (the newest 84x84 frame, what the agent sees) on gymnasium's
        # capped cubic schedule, and the game in progress at close
        class RecordVideoEnv0(gym.vector.VectorWrapper):
            def __init__(self, env: gym.vector.VectorEnv, video_folder: str):
                super().__init__(env)
                self.video_folder, self.episode_id, self.frames = video_folder, 0, []

            def reset(self, **kwargs):
                obs, infos = self.env.reset(**kwargs)
                self.frames = [obs[0, -1]]
                return obs, infos

            def step(self, actions):
                obs, rewards, terminations, truncations, infos = self.env.step(actions)
                if terminations[0] or truncations[0]:
                    self.frames.append(infos["final_obs"][0, -1])
                    self.save()
                    self.episode_id += 1
                if capped_cubic_video_schedule(self.episode_id):
                    self.frames.append(obs[0, -1])
                return obs, rewards, terminations, truncations, infos

            def save(self):
                if capped_cubic_video_schedule(self.episode_id) and len(self.frames) > 1:
                    frames = [np.repeat(frame[..., None], 3, axis=-1) for frame in self.frames]  # grayscale to RGB
                    save_video(frames, self.video_folder, fps=15, episode_index=self.episode_id)
                self.frames = []

            def close(self, **kwargs):
                self.save()
                super().close(**kwargs)

        envs = RecordVideoEnv0(envs, f"videos/{run_name}")
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


# ---- network ----
def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, in_channels: int, n_actions: int, hidden_dim: int = 512):
        super().__init__()
        # the Nature CNN (DQN Nature), shared by both heads; sized for 84x84 frames
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(in_channels, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),  # (B, 64 * 7 * 7)
            layer_init(nn.Linear(64 * 7 * 7, hidden_dim)),
            nn.ReLU(),
        )
        self.actor = layer_init(nn.Linear(hidden_dim, n_actions), std=0.01)
        self.critic = layer_init(nn.Linear(hidden_dim, 1), std=1.0)
        self.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 4, 84, 84) uint8 pixels, scaled to [0, 1] in place (one float copy of a minibatch, not
        # two). channels_last (NHWC) is the native layout of oneDNN's CPU convolutions: the update runs
        # 1.3x faster here, in less memory (no reorders)
        x = x.contiguous(memory_format=torch.channels_last).float().div_(255.0)
        return self.network(x)  # (B, hidden_dim)

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(self.features(x))

    def get_action(self, x: torch.Tensor, action: torch.Tensor | None = None):
        """a ~ π(·|x) unless given, log π(a|x) and the entropy of π(·|x). The rollout takes the value
        too: it comes almost free with the features both heads share."""
        return self.get_action_and_value(x, action)[:3]

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        hidden = self.features(x)
        # the categorical distribution written out, as in ppo_discrete.py (same math as
        # torch.distributions.Categorical, which costs more than the MLP there)
        logp = self.actor(hidden).log_softmax(-1)  # (B, n_actions), normalized log-probabilities
        if action is None:
            # Gumbel-max: argmax(log p - log E), E ~ Exp(1), is an exact draw from p
            action = (logp - torch.empty_like(logp).exponential_().log()).argmax(-1)
        logprob = logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return action, logprob, entropy, self.critic(hidden)


# ---- algorithm ----
def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE eq. 16 over a (T, N) rollout; returns (advantages, returns), both (T, N).

    dones[t] = 1 means obs[t] is the first obs of a new episode (the step before it ended one),
    so the value after step t is cut by dones[t + 1], and by next_done after the last step.
    A truncated episode's bootstrap γ·V(final obs) is already folded into its last reward.
    """
    nextnonterminal = 1.0 - torch.cat((dones[1:], next_done.unsqueeze(0)))  # (T, N)
    nextvalues = torch.cat((values[1:], next_value.reshape(1, -1)))  # (T, N)
    # TD residuals δ_t = r_t + γ V(s_t+1) - V(s_t), then Â_t = δ_t + γλ Â_t+1 backwards in time;
    # the recursion runs in numpy, whose per-call cost is a tenth of torch's on rows this small
    deltas = (rewards + gamma * nextvalues * nextnonterminal - values).cpu().numpy()
    discounts = (gamma * gae_lambda * nextnonterminal).cpu().numpy()
    advantages = np.zeros_like(deltas)
    lastgaelam = 0.0
    for t in reversed(range(len(deltas))):
        advantages[t] = lastgaelam = deltas[t] + discounts[t] * lastgaelam
    advantages = torch.from_numpy(advantages).to(values.device)
    return advantages, advantages + values


def policy_loss(advantages: torch.Tensor, ratio: torch.Tensor, clip_coef: float) -> torch.Tensor:
    """PPO eq. 7, negated to be minimized: -E[min(r_t Â_t, clip(r_t, 1-ε, 1+ε) Â_t)]."""
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    return torch.max(pg_loss1, pg_loss2).mean()


def value_loss(
    newvalue: torch.Tensor, oldvalue: torch.Tensor, returns: torch.Tensor, clip_coef: float, clip_vloss: bool
) -> torch.Tensor:
    """0.5 * squared error; clipped as in the PPO baselines: max of unclipped and clipped error."""
    v_loss_unclipped = (newvalue - returns) ** 2
    if not clip_vloss:
        return 0.5 * v_loss_unclipped.mean()
    v_clipped = oldvalue + torch.clamp(newvalue - oldvalue, -clip_coef, clip_coef)
    v_loss_clipped = (v_clipped - returns) ** 2
    return 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()


def approx_kl(logratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimators of KL[π_old, π_θ] from log r_t(θ) at actions drawn from π_old:
    the naive -log r, and the unbiased lower-variance (r - 1) - log r (http://joschu.net/blog/kl-approx.html)."""
    ratio = logratio.exp()
    return (-logratio).mean(), ((ratio - 1) - logratio).mean()


def flatten_parameters(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies the module's parameters into one flat vector and makes each parameter a view of it, and
    each .grad a view of a second, zeroed vector: the optimizer then works on two tensors, not on a list
    of weights and biases. backward() adds into the .grad views, so zero the flat gradient before it
    (module.zero_grad() would set .grad to None and cut the views)."""
    params = list(module.parameters())
    flat_params = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    flat_grad = torch.zeros_like(flat_params)
    offset = 0
    for p in params:
        # views with the parameter's own strides, so that a layout such as channels_last is kept
        view = flat_params[offset : offset + p.numel()].as_strided(p.shape, p.stride())
        view.copy_(p.detach())
        p.data = view
        p.grad = flat_grad[offset : offset + p.numel()].as_strided(p.shape, p.stride())
        offset += p.numel()
    return flat_params, flat_grad


def clip_grad_norm(grad: torch.Tensor, max_norm: float) -> None:
    """Scales the flat gradient of all parameters in place so that its L2 norm is at most max_norm:
    torch.nn.utils.clip_grad_norm_, without its per-call bookkeeping."""
    grad.mul_((max_norm / (torch.linalg.vector_norm(grad) + 1e-6)).clamp(max=1.0))


@torch.no_grad()
def adam_step(
    param: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, eps: float, beta1=0.9, beta2=0.999
) -> None:
    """One Adam step in place on the flat parameter vector (Kingma & Ba 2015, https://arxiv.org/abs/1412.6980,
    Algorithm 1), the same arithmetic as torch.optim.Adam. Written out because torch.optim imports
    torch._dynamo, which costs 1.2 s and 70 MB at startup, and its per-step bookkeeping costs more than
    the step here."""
    state["step"] += 1
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)  # m ← β1·m + (1 - β1)·g
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v ← β2·v + (1 - β2)·g²
    denom = (exp_avg_sq.sqrt() / (1 - beta2 ** state["step"]) ** 0.5).add_(eps)  # √v̂ + ε, v̂ = v / (1 - β2^t)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1 ** state["step"]))  # θ ← θ - lr·m̂/(√v̂ + ε)


def explained_variance(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """1 - Var[y - ŷ] / Var[y]: 1 is a perfect value function, 0 no better than a constant."""
    var_y = np.var(y_true)
    return np.nan if var_y == 0 else float(1 - np.var(y_true - y_pred) / var_y)


# ---- main ----
def save_checkpoint(
    path: str, agent: nn.Module, adam_state: dict, args: Args, iteration: int, global_step: int, **state
) -> None:
    """Writes what --resume needs; state holds what the variant adds to it (β, normalization)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    rng = {
        "python": list(random.getstate()[1]),
        "numpy": [keys.tolist(), pos, has_gauss, cached_gaussian],  # the position too, not only the keys
        "torch": torch.get_rng_state(),
    }
    checkpoint = {
        "script": os.path.basename(__file__),
        "model": agent.state_dict(),
        "optimizer": adam_state,
        "args": asdict(args),
        "iteration": iteration,
        "global_step": global_step,
        "rng": rng,
        **state,
    }
    torch.save(checkpoint, path + ".tmp")
    os.replace(path + ".tmp", path)  # a kill mid-save never leaves a half-written checkpoint


def restore_rng(rng: dict) -> None:
    random.setstate((3, tuple(rng["python"]), None))
    keys, pos, has_gauss, cached_gaussian = rng["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(rng["torch"])


def evaluate(agent: Agent, env_id: str, eval_episodes: int, seed: int, deterministic: bool, device) -> list[float]:
    """Plays eval_episodes whole games (all lives) in a fresh env with the training preprocessing and
    returns their raw scores."""
    envs = make_envs(env_id, 1, False, "")
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            x = torch.as_tensor(obs, device=device)
            action = agent.actor(agent.features(x)).argmax(-1) if deterministic else agent.get_action(x)[0]
        obs, _, _, _, infos = envs.step(action.cpu().numpy())
        if "episode" in infos:
            episodic_returns.append(float(infos["episode"]["r"][0]))
    envs.close()
    return episodic_returns


def format_progress(global_step: int, total: int, mean_return: float, sps: int, eta_s: float) -> str:
    eta = time.strftime("%H:%M:%S", time.gmtime(eta_s))
    return f"step {global_step:>9}/{total} | return {mean_return:8.2f} | SPS {sps:>6} | ETA {eta}"


def main(args: Args) -> None:
    problem = check_args(args)
    if problem:
        sys.exit(f"{os.path.basename(__file__)}: error: {problem}")
    checkpoint = load_checkpoint(args.resume or args.eval_checkpoint) if args.resume or args.eval_checkpoint else None
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    writer = SummaryWriter(f"runs/{run_name}")
    hyperparameters = "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{hyperparameters}")

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup
    envs = make_envs(args.env_id, args.num_envs, args.capture_video, run_name)
    agent = Agent(envs.single_observation_space.shape[0], envs.single_action_space.n).to(device)
    # Adam with eps 1e-5 as in the PPO baselines, on the flat vector of all parameters: its step count
    # and first and second moment estimates
    flat_params, flat_grad = flatten_parameters(agent)
    adam_state = {"step": 0, "exp_avg": torch.zeros_like(flat_params), "exp_avg_sq": torch.zeros_like(flat_params)}
    lr = args.learning_rate
    start_iteration, global_step = 1, 0
    if checkpoint is not None:
        agent.load_state_dict(checkpoint["model"])
    if args.eval_checkpoint:
        envs.close()
        returns = evaluate(agent, args.env_id, args.eval_episodes, args.seed, args.eval_deterministic, device)
        for i, episodic_return in enumerate(returns):
            writer.add_scalar("eval/episodic_return", episodic_return, i)
        writer.close()
        print(
            f"eval {args.eval_checkpoint}: return {np.mean(returns):.2f} ± {np.std(returns):.2f} over {len(returns)} episodes"
        )
        return
    if args.resume:
        adam_state["step"] = checkpoint["optimizer"]["step"]
        for name in ("exp_avg", "exp_avg_sq"):
            adam_state[name].copy_(checkpoint["optimizer"][name])
        start_iteration, global_step = checkpoint["iteration"] + 1, checkpoint["global_step"]
        restore_rng(checkpoint["rng"])

    # storage: obs[t] is seen, actions[t] taken, rewards[t] received (clipped); dones[t] marks obs[t]
    # as the first obs of an episode, that is of a new life. The rollout is stored in numpy (writing a
    # row costs a tenth of a torch write) and moved to torch once it ends. Pixels stay uint8: a quarter
    # of float32's memory, and the network scales them
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.uint8)
    actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int64)
    logprobs = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    rewards = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    dones = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    values = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)

    # A SIGINT or SIGTERM ends training after the current iteration; the finally block then saves,
    # flushes and closes. A second Ctrl-C aborts at once (still closing the log).
    stop = {"signal": None, "aborted": False}

    def request_stop(signum, frame):
        if stop["signal"] is not None:
            raise KeyboardInterrupt
        stop["signal"] = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this iteration (Ctrl-C again to abort)", flush=True)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    start_time = last_print = time.time()
    start_step = global_step
    iteration = start_iteration - 1
    next_obs, infos = envs.reset(seed=args.seed + global_step)
    lives = infos["lives"]
    next_done = np.zeros(args.num_envs, dtype=bool)
    try:
        for iteration in range(start_iteration, args.num_iterations + 1):
            # Annealing the rate if instructed to do so.
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                lr = frac * args.learning_rate

            with torch.inference_mode():
                for step in range(0, args.num_steps):
                    global_step += args.num_envs
                    obs[step] = next_obs
                    dones[step] = next_done

                    action, logprob, _, value = agent.get_action_and_value(torch.as_tensor(next_obs, device=device))
                    action, logprob = action.cpu().numpy(), logprob.cpu().numpy()
                    actions[step], logprobs[step], values[step] = action, logprob, value.flatten().cpu().numpy()

                    next_obs, reward, terminations, truncations, infos = envs.step(action)
                    # A life loss ends the training episode (DQN Nature, baselines' EpisodicLifeEnv): no
                    # value is bootstrapped across it, while the game goes on; only a game over resets.
                    # At a game over or a truncation infos["lives"] already counts the new game's lives,
                    # so a life lost on that very step goes unseen (a truncation is then bootstrapped).
                    life_lost = (infos["lives"] < lives) & ~terminations & ~truncations
                    lives = infos["lives"]
                    # train on the reward's sign (DQN Nature): one scale for every game
                    reward = np.sign(reward).astype(np.float32)
                    truncated = truncations & ~terminations  # TimeLimit also flags a terminal last step
                    if args.bootstrap_truncated and truncated.any():
                        # A time limit is not a terminal state: the return goes on past it, so fold
                        # γ·V(final obs) into the last reward; the episode boundary still cuts the GAE sum.
                        final_obs = np.stack(infos["final_obs"][truncated])
                        final_values = agent.get_value(torch.as_tensor(final_obs, device=device))
                        reward[truncated] += args.gamma * final_values.flatten().cpu().numpy()
                    rewards[step] = reward
                    next_done = terminations | truncations | life_lost

                    # the whole game's raw score (all lives, unclipped), what Atari papers report, and
                    # its length in agent steps (4 frames each)
                    if "episode" in infos:
                        for i in np.flatnonzero(infos["_episode"]):
                            writer.add_scalar("charts/episodic_return", infos["episode"]["r"][i], global_step)
                            writer.add_scalar("charts/episodic_length", infos["episode"]["l"][i], global_step)

            # the rollout as torch tensors, and the bootstrap value V(s_T) after it
            obs_t = torch.as_tensor(obs, device=device)  # (T, N, 4, 84, 84)
            values_t = torch.as_tensor(values, device=device)  # (T, N)
            with torch.no_grad():
                next_value = agent.get_value(torch.as_tensor(next_obs, device=device)).flatten()
            advantages, returns = compute_gae(
                torch.as_tensor(rewards, device=device),
                values_t,
                torch.as_tensor(dones, device=device),
                next_value,
                torch.as_tensor(next_done, dtype=torch.float32, device=device),
                args.gamma,
                args.gae_lambda,
            )

            # flatten the batch
            b_obs = obs_t.reshape((-1,) + envs.single_observation_space.shape)
            b_logprobs = torch.as_tensor(logprobs, device=device).reshape(-1)
            b_actions = torch.as_tensor(actions, device=device).reshape(-1)
            b_advantages = advantages.reshape(-1)
            b_returns = returns.reshape(-1)
            b_values = values_t.reshape(-1)

            # Optimizing the policy and value network
            update_stats = torch.zeros(6, device=device)  # summed over minibatches, averaged when logged
            num_updates = 0
            for epoch in range(args.update_epochs):
                b_inds = torch.randperm(args.batch_size, device=device)
                for start in range(0, args.batch_size, args.minibatch_size):
                    end = start + args.minibatch_size
                    mb_inds = b_inds[start:end]
                    mb_advantages = b_advantages[mb_inds]
                    if args.norm_adv:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                    # The minibatch's gradient is the sum of its chunks' gradients, each chunk's loss weighted
                    # by its share of the minibatch: the same update, with one chunk's activations alive at a time
                    flat_grad.zero_()
                    mb_stats = torch.zeros(6, device=device)
                    for ch_inds, ch_advantages in zip(
                        mb_inds.tensor_split(args.grad_chunks),
                        mb_advantages.tensor_split(args.grad_chunks),
                        strict=True,
                    ):
                        share = len(ch_inds) / args.minibatch_size
                        _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                            b_obs[ch_inds], b_actions[ch_inds]
                        )
                        logratio = newlogprob - b_logprobs[ch_inds]
                        ratio = logratio.exp()

                        with torch.no_grad():
                            old_approx_kl, approx_kl_value = approx_kl(logratio)
                            clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()

                        pg_loss = policy_loss(ch_advantages, ratio, args.clip_coef)
                        v_loss = value_loss(
                            newvalue.view(-1), b_values[ch_inds], b_returns[ch_inds], args.clip_coef, args.clip_vloss
                        )
                        entropy_loss = entropy.mean()
                        loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef  # PPO eq. 9

                        (share * loss).backward()
                        stats = torch.stack([pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl_value, clipfrac])
                        mb_stats += share * stats.detach()
                    clip_grad_norm(flat_grad, args.max_grad_norm)
                    adam_step(flat_params, flat_grad, adam_state, lr, eps=1e-5)
                    update_stats += mb_stats
                    num_updates += 1

                if args.target_kl is not None and mb_stats[4] > args.target_kl:  # the last minibatch's approx_kl
                    break

            pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl_value, clipfrac = (
                update_stats / num_updates
            ).tolist()
            y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
            explained_var = explained_variance(y_pred, y_true)

            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/learning_rate", lr, global_step)
            writer.add_scalar("losses/value_loss", v_loss, global_step)
            writer.add_scalar("losses/policy_loss", pg_loss, global_step)
            writer.add_scalar("losses/entropy", entropy_loss, global_step)
            writer.add_scalar("losses/old_approx_kl", old_approx_kl, global_step)
            writer.add_scalar("losses/approx_kl", approx_kl_value, global_step)
            writer.add_scalar("losses/clipfrac", clipfrac, global_step)
            writer.add_scalar("losses/explained_variance", explained_var, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)

            now = time.time()
            if now - last_print > (0.25 if sys.stdout.isatty() else 10.0) or iteration == args.num_iterations:
                last_print = now
                mean_return = np.mean(envs.return_queue) if envs.return_queue else float("nan")
                eta_s = (args.num_iterations * args.batch_size - global_step) / max(sps, 1)
                line = format_progress(global_step, args.num_iterations * args.batch_size, mean_return, sps, eta_s)
                print("\r" + line if sys.stdout.isatty() else line, end="" if sys.stdout.isatty() else "\n", flush=True)
            if stop["signal"] is not None:
                break

        if stop["signal"] is None and args.eval_episodes > 0:
            returns = evaluate(agent, args.env_id, args.eval_episodes, args.seed, args.eval_deterministic, device)
            for i, episodic_return in enumerate(returns):
                writer.add_scalar("eval/episodic_return", episodic_return, i)
            print(f"\neval: return {np.mean(returns):.2f} ± {np.std(returns):.2f} over {len(returns)} episodes")
    except KeyboardInterrupt:  # a second Ctrl-C: the iteration is half done, so no checkpoint of it
        stop["aborted"] = True
    finally:
        if args.save_model and not stop["aborted"]:
            model_path = f"runs/{run_name}/{args.exp_name}.pt"
            save_checkpoint(model_path, agent, adam_state, args, iteration, global_step)
            print(f"\nmodel saved to {model_path}")
        envs.close()
        writer.close()
    if stop["signal"] is not None:
        sys.exit(128 + stop["signal"])


# ---- entry point ----
if __name__ == "__main__":
    main(tyro.cli(Args))
