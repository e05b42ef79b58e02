"""The seed articles' remaining families (issue 9), each a preset over the shared
decoder: every tiny preset learns in 40 steps on the default corpus, and its train
steps on the mixed 8-device mesh equal one device's. HF parity, export and the full
presets' parameter counts are in the parity, export and param-count suites."""

import json

import jax
import numpy as np
import pytest

from tests.conftest import MESHES, SINGLE, run_on_mesh, small_train_config
from trainer.trainer import Trainer

FAMILIES = ("qwen2", "qwen2_moe", "olmo3", "mixtral", "glm5", "grok2", "minimax01", "gemma3n")


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_preset_trains(tmp_path, family):
  config = small_train_config(family, steps=40, log_every=10, eval_batches=1)
  Trainer(config, str(tmp_path)).run()
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 4 and losses[-1] < losses[0] - 0.5, losses
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  jax.clear_caches()


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_preset_shards(tmp_path, family):
  """(data 1, fsdp 2, tensor 2, expert 2): Qwen2's q/k/v biases split over `tensor`
  with their heads, the MoE families' experts over `expert`, Qwen2-MoE's shared
  expert and its gate like a dense FFN."""
  losses, params = run_on_mesh(tmp_path, family, SINGLE, devices=1)
  sharded_losses, sharded_params = run_on_mesh(tmp_path, family, MESHES[2], devices=8)
  np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
  assert sharded_params.keys() == params.keys()
  # The key bias's gradient is zero up to rounding (a constant added to every key of
  # a query leaves its softmax as it was), and Adam normalises that noise into moves
  # of ~2e-6 that differ with the reduction order; a wrong reduction is off by a step
  # of lr = 3e-3.
  for name, value in params.items():
    np.testing.assert_allclose(sharded_params[name], value, rtol=1e-5, atol=5e-5, err_msg=name)
