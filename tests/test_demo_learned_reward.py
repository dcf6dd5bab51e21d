"""examples/demo-learned-reward: its configs stay valid and keep what issue 18 asks of them."""

from __future__ import annotations

from pathlib import Path

from ppo_core.commands.demo import TASK, demo_configs
from ppo_core.config import load_config
from ppo_core.config.train_reward import load_train_reward_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "demo-learned-reward"


def test_the_learned_reward_dominates_and_starts_from_the_demo():
    ppo = load_config(EXAMPLE / "ppo.yaml")
    reward = load_train_reward_config(EXAMPLE / "train-reward.yaml")
    demo = demo_configs()
    weights = {term.name: term.weight for term in ppo.rewards}
    assert weights["reward_model"] >= 0.5 * sum(weights.values())
    # an ensemble: train-reward.yaml's output and the members trained with train.seed 100, 200 (its header says how)
    assert ppo.rewards[0].options["path"] == [reward.output_dir, reward.output_dir + "-1", reward.output_dir + "-2"]
    assert "--set train.seed=200 --set output_dir=" + reward.output_dir + "-2" in " ".join(
        (EXAMPLE / "train-reward.yaml").read_text().replace("\\\n#", "").split())
    assert ppo.model.path == reward.model.path == demo["ppo"]["model"]["path"]
    assert ppo.data.dataset == reward.data.dataset == TASK["dataset"]
    assert ppo.data.options == TASK["options"] and ppo.ppo.missing_eos_penalty
    assert reward.train.train_backbone and reward.data.corruptions.count("substitute") > 1
