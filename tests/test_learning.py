"""Learning tests: the default algorithm solves an easy task within a bounded budget."""

import numpy as np
import pytest
from conftest import SCRIPTS, run_dirs, run_script, scalars

# script -> (arguments, threshold on the mean return of the episodes in the last 10% of steps)
LEARNING = {
    "ppo_discrete.py": (["--env-id", "CartPole-v1", "--total-timesteps", "400000"], 475.0),
    "ppo_penalty.py": (["--env-id", "CartPole-v1", "--total-timesteps", "400000"], 475.0),
}


@pytest.mark.learning
@pytest.mark.parametrize("script", sorted(set(LEARNING) & set(SCRIPTS)))
def test_default_algorithm_solves_cartpole(script, tmp_path):
    args, threshold = LEARNING[script]
    run_script(script, [*args, "--seed", "1", "--eval-episodes", "0"], tmp_path, timeout=600)
    (run_dir,) = run_dirs(tmp_path)
    episodes = scalars(run_dir)["charts/episodic_return"]
    total_timesteps = int(args[args.index("--total-timesteps") + 1])
    final = [value for step, value in episodes if step >= 0.9 * total_timesteps]
    assert len(final) >= 10
    assert np.mean(final) >= threshold, f"final return {np.mean(final):.1f} < {threshold}"
