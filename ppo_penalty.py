"""PPO with the adaptive KL penalty for discrete action spaces (classic control), with GAE.

Implements Schulman et al. 2017, "Proximal Policy Optimization Algorithms"
(https://arxiv.org/abs/1707.06347), section 4: L^KLPEN (eq. 8) with the exact categorical KL,
and β ← β/2 if d < d_targ/1.5, β ← 2β if d > 1.5·d_targ after each update, where d is the mean
KL[π_old, π_θ] over the whole batch; with advantages from generalized advantage estimation
(Schulman et al. 2016, https://arxiv.org/abs/1506.02438, eq. 16).

Differs from ppo_discrete.py in: the policy loss (KL penalty, not clipping), the β update, the
old policy's log-probabilities kept for the exact KL, --kl-coef/--kl-target/--adaptive-kl, the
logs losses/kl_coef and losses/kl. --clip-coef only clips the value update (--clip-vloss) here.

Symbols: N=num_envs, T=num_steps, K=update_epochs, γ=gamma, λ=gae_lambda, ε=clip_coef,
c1=vf_coef, c2=ent_coef, β=kl_coef, d_targ=kl_target, r_t(θ)=ratio, Â_t=advantages.
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
    num_threads: int = 1
    """torch CPU threads (1 is fastest for small networks: no thread hand-off per layer)"""
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
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 500000
    """total environment steps of training, over all envs"""
    learning_rate: float = 2.5e-4
    """the learning rate of the Adam optimizer"""
    num_envs: int = 4
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
    clip_coef: float = 0.2
    """ε: the value clipping range of --clip-vloss (the surrogate is not clipped here)"""
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

    # KL penalty specific arguments
    kl_coef: float = 1.0
    """β₀: the initial coefficient of the KL penalty"""
    kl_target: float = 0.01
    """d_targ: the KL the adaptive β steers towards"""
    adaptive_kl: bool = True
    """if toggled, adapt β after each update (off: the paper's fixed-β variant)"""

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
        (args.target_kl is None or args.target_kl > 0, "--target-kl must be positive (or omitted)"),
        (args.resume is None or args.eval_checkpoint is None, "pass --resume or --eval-checkpoint, not both"),
        (args.eval_checkpoint is None or args.eval_episodes > 0, "--eval-checkpoint needs --eval-episodes 1 or more"),
        (args.kl_coef >= 0, "--kl-coef must be 0 or more"),
        (args.kl_target > 0, "--kl-target must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    try:
        gym.spec(args.env_id)
    except gym.error.Error as e:
        return f"unknown --env-id {args.env_id!r} ({e}); pass a registered gymnasium id such as CartPole-v1"
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
    try:
        env = gym.make(env_id)
    except gym.error.DependencyNotInstalled as e:
        return f"--env-id {env_id} needs a package that is not installed ({e}); pip install -r requirements.txt"
    except Exception as e:
        return f"--env-id {env_id} cannot be built ({type(e).__name__}: {e})"
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    if isinstance(action_space, gym.spaces.Box):
        return f"--env-id {env_id} has continuous actions; use ppo_continuous.py"
    if not isinstance(action_space, gym.spaces.Discrete):
        return f"--env-id {env_id} has a {type(action_space).__name__} action space; this script needs Discrete"
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        hint = "use ppo_atari.py" if len(getattr(obs_space, "shape", ()) or ()) == 3 else "flatten it first"
        return f"--env-id {env_id} observations are not a flat vector ({obs_space}); {hint}"
    return None


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


def make_envs(env_id: str, num_envs: int, capture_video: bool, run_name: str) -> gym.vector.VectorEnv:
    # SAME_STEP autoreset: the step that ends an episode returns the next episode's first obs and
    # the ended one's last obs in info["final_obs"]. Every stored transition is then a real one
    # (NEXT_STEP would interleave a no-op reset step), and a truncation's final obs is at hand to
    # bootstrap in the same step. https://farama.org/Vector-Autoreset-Mode
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, i, capture_video, run_name) for i in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


# ---- network ----
def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
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

    def get_action(self, x: torch.Tensor, action: torch.Tensor | None = None):
        """a ~ π(·|x) unless given and log π(a|x), all the rollout needs, and log π(·|x) of every action."""
        # the categorical distribution written out: torch.distributions.Categorical computes the
        # same, at twice the cost of the whole network on a CartPole-sized batch
        logp = self.actor(x).log_softmax(-1)  # (B, n_actions), normalized log-probabilities
        if action is None:
            # Gumbel-max: argmax(log p - log E), E ~ Exp(1), is an exact draw from p
            action = (logp - torch.empty_like(logp).exponential_().log()).argmax(-1)
        return action, logp.gather(-1, action.unsqueeze(-1)).squeeze(-1), logp

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        """a, log π(a|x), the entropy of π(·|x) and V(x)."""
        action, logprob, logp = self.get_action(x, action)
        entropy = -(logp.exp() * logp).sum(-1)
        return action, logprob, entropy, self.critic(x)


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
    """Plays eval_episodes episodes in a fresh env and returns their undiscounted returns."""
    env = gym.wrappers.RecordEpisodeStatistics(gym.make(env_id))
    obs, _ = env.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
            action = agent.actor(x).argmax(-1) if deterministic else agent.get_action(x)[0]
        obs, _, terminated, truncated, info = env.step(action.item())
        if terminated or truncated:
            episodic_returns.append(float(info["episode"]["r"]))
            obs, _ = env.reset()
    env.close()
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
    kl_coef = args.kl_coef
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
        kl_coef = checkpoint["kl_coef"]
        restore_rng(checkpoint["rng"])

    # storage: obs[t] is seen, actions[t] taken, rewards[t] received; dones[t] marks obs[t] as the
    # first obs of an episode. The rollout is stored in numpy (writing a row costs a tenth of a torch
    # write) and moved to torch once it ends; the values V(obs[t]) come then too, in one batch.
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.float32)
    actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int64)
    logprobs = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    rewards = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    dones = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)

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
    next_obs, _ = envs.reset(seed=args.seed + global_step)
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

                    action, logprob, _ = agent.get_action(torch.as_tensor(next_obs, dtype=torch.float32, device=device))
                    action, logprob = action.cpu().numpy(), logprob.cpu().numpy()
                    actions[step], logprobs[step] = action, logprob

                    next_obs, reward, terminations, truncations, infos = envs.step(action)
                    truncated = truncations & ~terminations  # TimeLimit also flags a terminal last step
                    if args.bootstrap_truncated and truncated.any():
                        # A time limit is not a terminal state: the return goes on past it, so fold
                        # γ·V(final obs) into the last reward; the episode boundary still cuts the GAE sum.
                        final_obs = np.stack(infos["final_obs"][truncated])
                        final_values = agent.get_value(torch.as_tensor(final_obs, dtype=torch.float32, device=device))
                        reward[truncated] += args.gamma * final_values.flatten().cpu().numpy()
                    rewards[step] = reward
                    next_done = terminations | truncations

                    if "episode" in infos:
                        for i in np.flatnonzero(infos["_episode"]):
                            writer.add_scalar("charts/episodic_return", infos["episode"]["r"][i], global_step)
                            writer.add_scalar("charts/episodic_length", infos["episode"]["l"][i], global_step)

            # V(s_t) of the whole rollout in one batch (the critic is a network of its own, which the
            # rollout does not need), and the bootstrap value V(s_T) after it
            obs_t = torch.as_tensor(obs, device=device)  # (T, N, obs_dim)
            with torch.no_grad():
                values = agent.get_value(obs_t).reshape(args.num_steps, args.num_envs)
                next_value = agent.get_value(torch.as_tensor(next_obs, dtype=torch.float32, device=device)).flatten()
            advantages, returns = compute_gae(
                torch.as_tensor(rewards, device=device),
                values,
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
            b_values = values.reshape(-1)
            with torch.no_grad():  # π_old over all actions, for the exact KL: the weights are the rollout's
                b_oldlogp = agent.actor(b_obs).log_softmax(-1)

            # Optimizing the policy and value network
            update_stats = torch.zeros(6, device=device)  # summed over minibatches, averaged when logged
            num_updates = 0
            for epoch in range(args.update_epochs):
                b_inds = torch.randperm(args.batch_size, device=device)
                for start in range(0, args.batch_size, args.minibatch_size):
                    end = start + args.minibatch_size
                    mb_inds = b_inds[start:end]

                    _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
                    logratio = newlogprob - b_logprobs[mb_inds]
                    ratio = logratio.exp()

                    with torch.no_grad():
                        old_approx_kl, approx_kl_value = approx_kl(logratio)
                        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()

                    mb_advantages = b_advantages[mb_inds]
                    if args.norm_adv:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                    kl = categorical_kl(b_oldlogp[mb_inds], agent.actor(b_obs[mb_inds]).log_softmax(-1))
                    pg_loss = policy_loss(mb_advantages, ratio, kl, kl_coef)
                    v_loss = value_loss(
                        newvalue.view(-1), b_values[mb_inds], b_returns[mb_inds], args.clip_coef, args.clip_vloss
                    )
                    entropy_loss = entropy.mean()
                    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef  # PPO eq. 9

                    flat_grad.zero_()
                    loss.backward()
                    clip_grad_norm(flat_grad, args.max_grad_norm)
                    adam_step(flat_params, flat_grad, adam_state, lr, eps=1e-5)
                    update_stats += torch.stack(
                        [pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl_value, clipfrac]
                    ).detach()
                    num_updates += 1

                if args.target_kl is not None and approx_kl_value > args.target_kl:
                    break

            pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl_value, clipfrac = (
                update_stats / num_updates
            ).tolist()
            with torch.no_grad():  # d, on the whole batch after the update's epochs
                kl = categorical_kl(b_oldlogp, agent.actor(b_obs).log_softmax(-1)).mean().item()
            writer.add_scalar("losses/kl_coef", kl_coef, global_step)
            writer.add_scalar("losses/kl", kl, global_step)
            if args.adaptive_kl:
                kl_coef = update_kl_coef(kl_coef, kl, args.kl_target)
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
            save_checkpoint(model_path, agent, adam_state, args, iteration, global_step, kl_coef=kl_coef)
            print(f"\nmodel saved to {model_path}")
        envs.close()
        writer.close()
    if stop["signal"] is not None:
        sys.exit(128 + stop["signal"])


# ---- entry point ----
if __name__ == "__main__":
    main(tyro.cli(Args))
