"""Specs for trainer/optim.py: Muon's orthogonalised, RMS-matched updates, the
Muon / AdamW split of every tiny-preset param, and the schedules."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs import base
from modeling.config import decoder_config
from tests.conftest import family_config
from trainer import optim
from trainer import state as state_lib


def _optim(**kw):
  o = base.get_config().optim
  o.unlock()
  o.update(dict(name="muon", grad_clip=0.0, weight_decay=0.0, warmup_steps=0), **kw)
  return o


def _first_update(shape, axes, grad=None, **kw):
  """Muon's first update (lr 1, constant) for one param of `shape` / logical `axes`."""
  params = {"w": jnp.zeros(shape)}
  tx, _ = optim.make(_optim(schedule="constant", lr=1.0, **kw), 10, {"w": axes})
  grads = {"w": jax.random.normal(jax.random.key(0), shape) if grad is None else grad}
  updates, _ = tx.update(grads, tx.init(params), params)
  return -np.asarray(updates["w"], np.float64)  # updates are -lr * direction


@pytest.mark.parametrize("shape", [(64, 64), (32, 128), (128, 32), (256, 48)])
def test_newton_schulz_singular_values_near_one(shape):
  update = _first_update(shape, ("embed", "mlp"))
  sv = np.linalg.svd(update / (0.2 * np.sqrt(max(shape))), compute_uv=False)
  assert sv.min() > 0.5 and sv.max() < 1.3, (sv.min(), sv.max())


def test_moonlight_scale_gives_update_rms_near_0_2():
  """RMS ~0.2 whatever the shape (unscaled, a 256x48 update's RMS would be ~0.05).
  A little under 0.2: 5 Newton-Schulz steps leave singular values in ~0.7-1.1."""
  shapes = [(64, 64), (32, 128), (128, 32), (256, 48), (128, 1024)]
  rms = [np.sqrt(np.mean(_first_update(s, ("embed", "mlp")) ** 2)) for s in shapes]
  assert all(0.15 < r < 0.22 for r in rms), rms
  assert max(rms) / min(rms) < 1.15, rms


def test_expert_stack_is_orthogonalised_per_expert():
  grad = jax.random.normal(jax.random.key(1), (4, 32, 16))
  grad = grad * jnp.array([1.0, 10.0, 0.1, 3.0])[:, None, None]  # experts of unequal scale
  update = _first_update(grad.shape, ("experts", "embed", "expert_mlp"), grad)
  for i, expert in enumerate(update):
    sv = np.linalg.svd(expert / (0.2 * np.sqrt(32)), compute_uv=False)
    assert sv.min() > 0.5 and sv.max() < 1.3
    # Each expert's update is what its gradient alone would give (not one
    # [4 * 32, 16] matrix, where the large expert would swamp the small one).
    alone = _first_update((32, 16), ("embed", "expert_mlp"), grad[i])
    np.testing.assert_allclose(expert, alone, rtol=1e-4, atol=1e-6)


def _labels(family):
  cfg = decoder_config(family_config(family).model)
  labels, dims = optim.muon_labels(state_lib.logical_axes(cfg))
  flat = traverse_util.flatten_dict(labels)
  flat_dims = traverse_util.flatten_dict(
    dims, is_leaf=lambda _, x: x is None or isinstance(x, tuple) and hasattr(x, "reduction_axis")
  )
  name = lambda k: "/".join(str(p) for p in k if not str(p).isdigit())
  return {name(k): v for k, v in flat.items()}, {name(k): v for k, v in flat_dims.items()}


@pytest.mark.parametrize("family", ["qwen3", "deepseek_v3", "gpt_oss", "qwen3_next", "kimi_linear"])
def test_param_partition_follows_the_text(family):
  labels, dims = _labels(family)
  for path, label in labels.items():
    leaf = path.split("/")[-1]
    adam = (
      path in ("embed", "lm_head")
      or "/router/" in path
      or leaf.endswith(("bias", "scale", "sinks", "conv"))  # conv: linear-attention taps
      or leaf == "A_log"  # one decay rate per head
    )
    assert label == ("adam" if adam else "muon"), path
  muon = {p for p, label in labels.items() if label == "muon"}
  assert muon  # attention, dense and expert matrices
  if family == "deepseek_v3":
    assert dims["stack/blocks/mlp/experts/gate_proj"] == ((2,), (3,))  # [layers, E, e, f]
    assert dims["stack/blocks/mlp/experts/down_proj"] == ((2,), (3,))  # [layers, E, f, e]
    assert dims["stack/blocks/attn/q_b_proj"] == ((1,), (2, 3))  # [layers, q_lora, h, d]
    assert dims["stack/blocks/attn/o_proj"] == ((1, 2), (3,))  # [layers, h, d, e]
    assert labels["mtp/block/attn/kv_a_proj"] == "muon"


def test_weight_decay_skips_biases_even_when_2d():
  """KDA's dt_bias [heads, head_dim] is a bias: never decayed; its projections and
  conv taps are."""
  cfg = decoder_config(family_config("kimi_linear").model)
  mask = traverse_util.flatten_dict(optim.decay_mask(state_lib.logical_axes(cfg)))
  kda = {k[-1]: v for k, v in mask.items() if k[:3] == ("stack", "blocks", 0)}
  assert kda["dt_bias"] is False and kda["A_log"] is False
  assert kda["q_proj"] and kda["f_b_proj"] and kda["q_conv"]


def test_muon_trains_sharded_params_under_jit(tmp_path):
  """Muon's state and step on the tiny MoE preset, jitted; the loss falls."""
  from tests.conftest import small_train_config  # noqa: PLC0415
  from trainer.trainer import Trainer  # noqa: PLC0415

  config = small_train_config("deepseek_v3", steps=12, log_every=12, eval_batches=1)
  config.optim.update(name="muon", lr=0.02, warmup_steps=2)
  first = None
  trainer = Trainer(config, str(tmp_path))
  batch = trainer.put(next(trainer.data_iter))
  for _ in range(12):
    trainer.state, metrics = trainer._train_step(trainer.state, batch)
    first = first if first is not None else float(metrics["loss"])
  assert float(metrics["loss"]) < first - 0.5


def _schedule(**kw):
  o = ml_collections.ConfigDict(
    dict(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="wsd", decay_fraction=0.2)
  )
  o.update(kw)
  return optim.schedule(o, 100)


@pytest.mark.parametrize(
  "shape, mid_decay", [("linear", 0.55), ("cosine", 0.55), ("sqrt", 1 - 0.9 * np.sqrt(0.5))]
)
def test_wsd_warms_up_holds_then_decays(shape, mid_decay):
  lr = _schedule(decay_shape=shape)
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == float(lr(50)) == float(lr(80)) == 1.0
  assert float(lr(90)) == pytest.approx(mid_decay, rel=1e-5)
  assert float(lr(100)) == pytest.approx(0.1)


def test_bad_optimizer_fields_are_one_clear_error():
  with pytest.raises(ValueError, match="optim.name='lion' is not valid"):
    optim.validate(_optim(name="lion"), 100)
  with pytest.raises(ValueError, match="optim.decay_fraction=0.95"):
    optim.validate(_optim(schedule="wsd", decay_fraction=0.95, warmup_steps=10), 100)


def test_clip_by_global_norm_matches_optax_and_fuses_into_adamw():
  """Our clip is optax's (to f32 rounding, clipped or not), and an AdamW step with
  it keeps no clipped-gradient buffer: optax's per-element divide does."""
  import optax  # noqa: PLC0415

  grads = {"a": jnp.arange(6.0).reshape(2, 3), "b": -jnp.ones(4)}
  for max_norm in (0.5, 100.0):
    ours, _ = optim.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    want, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6)
  shape = jax.ShapeDtypeStruct((256, 1024), jnp.float32)
  temp = {}
  for name, clip in (("ours", optim.clip_by_global_norm), ("optax", optax.clip_by_global_norm)):
    tx = optax.chain(clip(1.0), optax.adamw(1e-3, weight_decay=0.1))

    def step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(
      shape, jax.eval_shape(tx.init, shape), shape
    )
    temp[name] = lowered.compile().memory_analysis().temp_size_in_bytes
  assert temp["ours"] < 256 * 1024 * 4 <= temp["optax"], temp
