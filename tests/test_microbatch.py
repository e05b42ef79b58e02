"""Gradient accumulation (`train.microbatches`, trainer/microbatch.py): the step
over micro-batches is the step over the whole batch — loss, gradients, the
update, MoE expert loads (the aux-free bias), the sequence balance loss and MTP —
to float32 rounding, on a batch whose micro-batches hold different numbers of
weighted positions. On 8 devices with expert parallelism: tests/test_sharding.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallelism.mesh import check_microbatches, make_mesh
from tests.conftest import small_train_config
from trainer import checks, microbatch, plan, precision, step


def _batch(config, seed=0):
  """Random tokens in several documents per row, one row half padding: the four
  micro-batches of 8 rows carry different weight sums."""
  b, s, vocab = config.train.batch_size, config.train.seq_len, config.model.vocab_size
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab, (b, s + 1))
  segment_ids = np.ones((b, s), np.int32) + (np.arange(s) >= rng.integers(8, s, (b, 1)))
  segment_ids[1, s // 2 :] = 0  # padding
  positions = np.zeros((b, s), np.int32)
  for r in range(b):
    for seg in np.unique(segment_ids[r]):
      where = segment_ids[r] == seg
      positions[r, where] = np.arange(where.sum())
  weights = (segment_ids != 0) & (np.roll(segment_ids, -1, 1) == segment_ids)
  weights[:, -1] = segment_ids[:, -1] != 0
  return {
    "inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
    "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
    "segment_ids": jnp.asarray(segment_ids),
    "positions": jnp.asarray(positions),
    "weights": jnp.asarray(weights, jnp.float32),
  }


def _programs(config, n):
  mesh = make_mesh(config.mesh, jax.devices()[:1])
  whole = step.build(config, mesh)
  config = config.copy_and_resolve_references()
  config.train.microbatches = n
  return whole, step.build(config, mesh)


def _gradients(program, n):
  loss_fn = step.make_loss_fn(
    program.graphdef, program.model_cfg, program.objective, program.mesh, program.rules
  )
  micro = None
  if n > 1:
    shardings = jax.tree.map(lambda s: s.sharding, program.abstract_state["params"])
    micro = microbatch.Plan(n, program.batch_sharding, shardings)
  mtp = program.objective.mtp is not None
  return jax.jit(step.make_gradients(loss_fn, program.model_cfg, mtp, micro))


def _close(a, b, rtol=2e-5):
  scale = max(float(np.max(np.abs(np.asarray(b)))), 1e-6)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("family", ["llama3", "deepseek_v3"])
def test_microbatches_give_the_whole_batchs_loss_gradients_and_update(family):
  config = small_train_config(family, batch_size=32, seq_len=32)
  if family == "deepseek_v3":  # aux-free bias, sequence balance loss and MTP all on
    config.objective.update(moe_bias_update_rate=0.01, moe_seq_aux_weight=0.01, mtp_weight=0.3)
    config.model.num_layers = 3  # a dense layer, then two scanned MoE layers
    config.compute.scan_layers = "scan"
    config.optim.update(qk_clip_tau=0.05, qk_clip_measure="updated")  # clips every head
    assert config.model.mtp.depth >= 1
  whole, micro = _programs(config, 4)
  batch = _batch(config)
  state = whole.init_state(0)
  (total, (ce, aux, terms)), grads = _gradients(whole, 1)(state, batch)
  (total4, (ce4, aux4, terms4)), grads4 = _gradients(whole, 4)(state, batch)
  _close(total4, total)
  _close(ce4, ce)
  jax.tree.map(_close, grads4, grads)
  assert set(terms4) == set(terms)
  for name in terms:
    _close(terms4[name], terms[name])
  if family == "deepseek_v3":
    assert {"expert_load", "mtp_loss", "aux_loss"} <= set(terms)
    np.testing.assert_array_equal(terms4["expert_load"], terms["expert_load"])
    for path, st in aux["layers"].items():
      if "load" in st:
        np.testing.assert_array_equal(aux4["layers"][path]["load"], st["load"])

  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  new, metrics = whole.train_step(copy(state), batch)
  new4, metrics4 = micro.train_step(copy(state), batch)
  for name in ("loss", "grad_norm") + (("max_logit",) if family == "deepseek_v3" else ()):
    _close(metrics4[name], metrics[name])
  if family == "deepseek_v3":
    assert metrics["max_logit"] > 0.05  # QK-clip rescaled heads in both
  # The router biases move by rate * sign(mean load - load): the same loads, the same move.
  jax.tree.map(np.testing.assert_array_equal, new4["model_state"], new["model_state"])
  jax.tree.map(lambda a, b: _close(a, b, rtol=1e-4), new4["params"], new["params"])


def test_eval_over_microbatches_sums_the_whole_batch():
  config = small_train_config("llama3", batch_size=8, seq_len=32)
  whole, micro = _programs(config, 4)
  state, batch = whole.init_state(0), _batch(config, seed=1)
  args = (state["params"], state["model_state"], batch)
  for got, want in zip(micro.eval_step(*args), whole.eval_step(*args), strict=True):
    _close(got, want)


def _compiled_temps(config, section: str, field: str, counts) -> list[int]:
  """The compiled step's temporary bytes on one device with config.section.field
  set to each of `counts`."""
  mesh = make_mesh(config.mesh, jax.devices()[:1])
  temps = []
  for n in counts:
    config[section][field] = n
    compiled = plan.compile_step(config, precision.model_config(config), mesh)
    temps.append(compiled["memory_per_device"]["temp"])
  return temps


def test_compiled_temporaries_fall_with_more_microbatches():
  config = small_train_config("llama3", batch_size=16, seq_len=128)
  one, four = _compiled_temps(config, "train", "microbatches", (1, 4))
  assert four < 0.5 * one, (one, four)


@pytest.mark.parametrize("n", [0, 3, 8])
def test_microbatches_that_do_not_divide_the_batch_are_one_error(n):
  config = small_train_config("llama3", batch_size=8)
  config.train.microbatches = n
  sizes = {"data": 2, "fsdp": 1, "expert": 1, "tensor": 1}
  with pytest.raises(ValueError, match=r"train\.microbatches=.*use one of \[1, 2, 4\]"):
    check_microbatches(8, n, sizes)
  if n != 8:  # 8 divides 8; only a 2-way data axis makes it too many
    with pytest.raises(ValueError, match=r"^train\.microbatches"):
      checks.validate(config)
