"""Multi-token prediction: masking of the shifted targets, a zero weight leaves
the main loss untouched, and both heads learn."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from modeling.losses import cross_entropy, head_losses
from tests.conftest import small_train_config
from trainer.objective import mtp_weight_schedule
from trainer.trainer import Trainer


def test_mtp_loss_shifts_targets_and_masks_document_ends():
  vocab, s = 5, 6
  targets = jnp.asarray([[1, 2, 3, 4, 0, 1]])
  segment_ids = jnp.asarray([[1, 1, 1, 2, 2, 2]])
  weights = jnp.ones((1, s))
  # Depth-1 logits that are right exactly where position i predicts targets[i+1].
  want = jnp.roll(targets, -1, axis=1)
  logits = 10.0 * jnp.eye(vocab)[want]
  identity = lambda h, head: h  # the "hidden" are the logits themselves

  def mtp_loss(logits):
    kw = dict(mtp_hidden=[logits], segment_ids=segment_ids)
    return head_losses(identity, None, jnp.zeros_like(logits), targets, weights, **kw)[2]

  (loss,) = mtp_loss(logits)
  # Valid positions: i=0,1 (doc 1) and i=3,4 (doc 2); i=2 crosses into doc 2, i=5 runs off the end.
  mask = jnp.asarray([[1, 1, 0, 1, 1, 0]], jnp.float32)
  expected = cross_entropy(logits, want, mask)[1]["ce"]
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  wrong = logits.at[0, 2].set(-logits[0, 2])  # a masked position cannot change the loss
  np.testing.assert_allclose(mtp_loss(wrong)[0], loss)


def _run(tmp_path, name, depth, weight, steps=6, late_weight=0.1):
  config = small_train_config("deepseek_v3", steps=steps, log_every=1)
  config.model.mtp.depth = depth
  config.objective.update(mtp_weight=weight, mtp_late_weight=late_weight)
  config.optim.warmup_steps = 1
  Trainer(config, str(tmp_path / name)).run()
  lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if "loss" in r]


def test_mtp_weight_zero_gives_the_no_mtp_main_loss(tmp_path):
  without = [r["loss"] for r in _run(tmp_path, "none", depth=0, weight=0.3)]
  zero = _run(tmp_path, "zero", depth=1, weight=0.0, late_weight=0.0)
  # A weight of 0 for the whole run leaves the MTP modules out of the step.
  assert [r["loss"] for r in zero] == without
  assert not any("mtp_loss" in r for r in zero)


def test_main_and_mtp_losses_fall_together(tmp_path):
  records = _run(tmp_path, "mtp", depth=2, weight=0.3, steps=30)
  first, last = records[0], records[-1]
  assert last["loss"] < first["loss"] - 0.5
  assert len(last["mtp_loss"]) == 2
  assert all(b < a - 0.5 for a, b in zip(first["mtp_loss"], last["mtp_loss"]))


def test_weight_schedule_is_none_only_when_zero_at_every_step():
  o = lambda **kw: ml_collections.ConfigDict(
    dict(dict(mtp_weight=0.3, mtp_late_weight=0.1, mtp_late_start=0.5), **kw)
  )
  schedule = mtp_weight_schedule(o(), depth=1, steps=10)
  assert [float(schedule(s)) for s in (0, 4, 5, 9)] == pytest.approx([0.3, 0.3, 0.1, 0.1])
  assert mtp_weight_schedule(o(), depth=0, steps=10) is None
  assert mtp_weight_schedule(o(mtp_weight=0.0, mtp_late_weight=0.0), depth=1, steps=10) is None
  # 0 until late_start, then 0.1: the modules must run.
  assert mtp_weight_schedule(o(mtp_weight=0.0), depth=1, steps=10) is not None
  # late_start = 1: the late weight is never used.
  assert mtp_weight_schedule(o(mtp_weight=0.0, mtp_late_start=1.0), depth=1, steps=10) is None
