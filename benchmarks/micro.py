"""Per-call costs behind two choices the scripts make, on ppo_discrete.py's CartPole-sized Agent.

    python benchmarks/micro.py

1. The optimizer: torch.optim.Adam's implementations (default, foreach, fused) and clip_grad_norm_
   with and without foreach, each timed alone on the Agent's parameters with gradients set.
2. The policy distribution: torch.distributions.Categorical against the written-out form in
   Agent.get_action, for one rollout step (4 observations, no gradient) and one minibatch update
   (128 observations, forward and backward).
One torch thread, as the script's default; the median of 5 repeats of many calls, in microseconds.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sps import load_script  # noqa: E402


def median_us(fn, calls: int = 2000) -> float:
    for _ in range(calls // 10):
        fn()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return float(np.median(times))


def categorical(agent, x, action=None):
    """CleanRL's form of get_action_and_value, with torch.distributions.Categorical."""
    probs = torch.distributions.Categorical(logits=agent.actor(x))
    if action is None:
        action = probs.sample()
    return action, probs.log_prob(action), probs.entropy(), agent.critic(x)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    agent = load_script("ppo_discrete.py").Agent(4, 2)
    params = list(agent.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    rows = []
    for name, kwargs in [("Adam step, default", {}), ("Adam step, foreach", {"foreach": True})]:
        optimizer = torch.optim.Adam(params, lr=1e-9, eps=1e-5, **kwargs)
        rows.append((name, median_us(optimizer.step)))
    optimizer = torch.optim.Adam(params, lr=1e-9, eps=1e-5, fused=True)
    rows.append(("Adam step, fused", median_us(optimizer.step)))
    rows.append(("clip_grad_norm_", median_us(lambda: torch.nn.utils.clip_grad_norm_(params, 1e9))))
    clip = lambda: torch.nn.utils.clip_grad_norm_(params, 1e9, foreach=True)  # noqa: E731
    rows.append(("clip_grad_norm_, foreach", median_us(clip)))

    x4, x128, a128 = torch.randn(4, 4), torch.randn(128, 4), torch.randint(0, 2, (128,))
    with torch.inference_mode():
        rows.append(("rollout step, Categorical", median_us(lambda: categorical(agent, x4))))
        rows.append(("rollout step, written out", median_us(lambda: agent.get_action_and_value(x4))))

    def update(fn):
        _, logprob, entropy, value = fn(x128, a128)
        (logprob.mean() + entropy.mean() + value.mean()).backward()

    rows.append(("update, Categorical", median_us(lambda: update(lambda x, a: categorical(agent, x, a)), 500)))
    rows.append(("update, written out", median_us(lambda: update(agent.get_action_and_value), 500)))
    print("| what | µs per call (median of 5) |\n|-|-|")
    for name, us in rows:
        print(f"| {name} | {us:.0f} |")


if __name__ == "__main__":
    main()
