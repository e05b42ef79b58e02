"""MoE inside the trainer: the aux-loss-free bias is state updated by the sign
rule inside the jitted step, never by the optimizer."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from tests.conftest import family_config, small_train_config
from trainer.trainer import Trainer, load_balance, progress_fields


def _tiny_moe(tmp_path, steps=6, bias_update_rate=None, **moe):
  config = family_config("deepseek_v3")
  config.model.update(num_layers=3, embed_dim=64, mlp_dim=128)
  config.model.moe.update(moe)
  if bias_update_rate is not None:
    config.objective.moe_bias_update_rate = bias_update_rate
  config.train.update(steps=steps, batch_size=4, seq_len=64, log_every=2, eval_batches=1)
  config.optim.warmup_steps = 0
  config.logging.progress_bar = False
  config.compute.scan_layers = "scan"  # the MoE layers as one scanned stack
  return Trainer(config, str(tmp_path))


def _flat(tree):
  return {"/".join(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_aux_free_bias_moves_by_sign_rule_each_step(tmp_path):
  trainer = _tiny_moe(tmp_path, steps=1, bias_update_rate=0.01)
  biases = {k: v for k, v in _flat(trainer.state["model_state"]).items() if "aux_free_bias" in k}
  # Layer 0 is dense; layers 1-2 are one scanned stack [2, E]; the MTP block is MoE too.
  assert sorted(biases) == [
    "mtp/0/block/mlp/router/aux_free_bias",
    "stack/blocks/0/mlp/router/aux_free_bias",
  ]
  assert all(np.all(v == 0) for v in biases.values())
  state, metrics = trainer._train_step(trainer.state, trainer.put(next(trainer.data_iter)))
  loads = np.asarray(metrics["expert_load"])  # [3, E]: layer 1, layer 2, MTP
  expected = 0.01 * np.sign(loads.mean(-1, keepdims=True) - loads)
  assert not any("aux_free_bias" in k for k in _flat(state["params"]))
  state = _flat(state["model_state"])
  np.testing.assert_allclose(
    state["stack/blocks/0/mlp/router/aux_free_bias"], expected[:2], atol=1e-7
  )
  np.testing.assert_allclose(state["mtp/0/block/mlp/router/aux_free_bias"], expected[2], atol=1e-7)
  assert np.any(expected != 0)


def test_bias_stays_zero_without_aux_free_balancing(tmp_path):
  trainer = _tiny_moe(tmp_path, steps=2, aux_free_bias=False)
  trainer.run()
  assert not any("aux_free_bias" in k for k in _flat(trainer.state["model_state"]))


def test_moe_metrics_reach_metrics_jsonl(tmp_path):
  trainer = _tiny_moe(tmp_path, steps=4)
  result = trainer.run()["train"]
  # Layers 1, 2 and the MTP module's block are MoE; layer 0 is dense.
  assert len(result["expert_load_max_over_mean"]) == 3
  assert all(r >= 1.0 for r in result["expert_load_max_over_mean"])
  assert result["dropped_frac"] == 0.0
  assert np.isfinite(result["loss"]) and np.isfinite(result["aux_loss"])
  bar = progress_fields(result)
  assert bar["load_max"] == f"{max(result['expert_load_max_over_mean']):.2f}"
  assert bar["mtp"] == f"{result['mtp_loss'][0]:.2f}"
  jax.clear_caches()


MOE_FAMILIES = (
  "deepseek_v3",
  "kimi_k2",
  "qwen3_moe",
  "qwen3_next",
  "kimi_linear",
  "deepseek_v32",
  "glm4_moe",
  "gpt_oss",
  "llama4",
  "minimax_m2",
)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_tiny_moe_preset_trains(tmp_path, family):
  """Each MoE family's tiny preset (4 layers: Llama 4's NoPE layer included) learns."""
  config = small_train_config(family, steps=20, log_every=10, eval_batches=1)
  config.model.num_layers = 4
  Trainer(config, str(tmp_path)).run()
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 2 and losses[1] < losses[0] - 0.3, losses
  jax.clear_caches()


def test_load_balance_is_over_the_summed_log_interval():
  """Two steps that each overload a different expert balance out over the interval."""
  steps = [np.array([[1.0, 3.0], [2.0, 2.0]]), np.array([[3.0, 1.0], [2.0, 2.0]])]
  assert load_balance(steps) == [1.0, 1.0]
  assert load_balance(steps[:1]) == [1.5, 1.0]
