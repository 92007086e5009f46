"""What pressing FIRE only when a game starts costs, against CleanRL's protocol (FIRE after every life loss too).

ppo_atari.py presses FIRE when a game starts (ale-py's use_fire_reset); CleanRL and OpenAI baselines also press
it after each life loss (FireResetEnv over EpisodicLifeEnv), which ale-py's vector env cannot do. This writes a
measurement copy of ppo_atari.py to OUT/raw/ whose rollout takes FIRE as the action after a life loss (stored as
the action taken, with its log-probability under the policy), then runs benchmarks/learning.py on both:

    python benchmarks/atari_fire.py --seeds 1 2 --total-timesteps 200000 --out benchmarks/results/atari-fire

Extra arguments go to benchmarks/learning.py (--reuse to continue, --env-ids to pick another game).
"""

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATCHES = [  # (anchor in ppo_atari.py, what is added after it)
    (
        "    next_done = np.zeros(local_num_envs, dtype=np.float32)\n",
        "    fire_next = np.zeros(local_num_envs, dtype=bool)  # the envs that lost a life at the last step\n",
    ),
    (
        "                    action, logprob, _, value = agent.get_action_and_value(x)\n",
        "                    if fire_next.any():  # CleanRL's FireResetEnv after a life loss, as the action taken\n"
        "                        action[torch.as_tensor(fire_next, device=device)] = 1  # FIRE in the minimal set\n"
        "                        action, logprob, _, value = agent.get_action_and_value(x, action)\n",
    ),
    ('                    lives = infos["lives"]\n', "                    fire_next = life_lost.copy()\n"),
]


def fire_after_life_loss(source: str) -> str:
    for anchor, addition in PATCHES:
        if source.count(anchor) != 1:
            sys.exit(
                f"atari_fire.py: error: ppo_atari.py changed: {anchor.strip()!r} is not there once; update PATCHES"
            )
        source = source.replace(anchor, anchor + addition)
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args, rest = parser.parse_known_args()
    variant = args.out / "raw" / "ppo_atari_fire.py"  # raw/ is not committed
    variant.parent.mkdir(parents=True, exist_ok=True)
    variant.write_text(fire_after_life_loss((ROOT / "ppo_atari.py").read_text()))
    command = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--out", str(args.out)]
    variant = variant.resolve().relative_to(ROOT) if variant.resolve().is_relative_to(ROOT) else variant.resolve()
    command += ["--variant", "FIRE at game start=ppo_atari.py", "--variant", f"FIRE after each life loss={variant}"]
    if "--env-ids" not in rest:
        command += ["--env-ids", "BreakoutNoFrameskip-v4"]
    sys.exit(subprocess.call(command + rest))


if __name__ == "__main__":
    main()
