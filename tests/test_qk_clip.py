"""Specs for trainer/qk_clip.py: on synthetic GQA and MLA layers whose largest
logits exceed tau, the clipped heads' recomputed max logit is tau (within 1%)
and every other head's logits are unchanged; values are never touched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling.decoder import by_layer
from tests.conftest import small_train_config
from trainer import qk_clip
from trainer import state as state_lib
from trainer.trainer import Trainer

TAU = 100.0
B, S, E = 2, 16, 32


def _x(seed=0):
  return jax.random.normal(jax.random.key(seed), (B, S, E))


def _gqa_logits(p, x, num_kv_heads):
  """Per head: the layer's pre-softmax logits q.k / sqrt(d) [h, b, s, t]."""
  q = jnp.einsum("bse,ehd->hbsd", x, p["q_proj"]) + p["q_bias"][:, None, None]
  k = jnp.einsum("bse,ekd->kbsd", x, p["k_proj"]) + p["k_bias"][:, None, None]
  k = jnp.repeat(k, q.shape[0] // num_kv_heads, axis=0)
  return jnp.einsum("hbsd,hbtd->hbst", q, k) / np.sqrt(q.shape[-1])


def _gqa_params(h=8, k=2, d=16, seed=1):
  keys = jax.random.split(jax.random.key(seed), 4)
  p = {
    "q_proj": 0.4 * jax.random.normal(keys[0], (E, h, d)),
    "k_proj": 0.4 * jax.random.normal(keys[1], (E, k, d)),
    "q_bias": jax.random.normal(keys[2], (h, d)),
    "k_bias": jax.random.normal(keys[3], (k, d)),
  }
  boost = jnp.ones(h).at[1].set(16.0).at[6].set(10.0)  # heads 1 (group 0) and 6 (group 1) blow up
  p["q_proj"] = p["q_proj"] * boost[None, :, None]
  p["q_bias"] = p["q_bias"] * boost[:, None]
  return p


def test_gqa_clip_brings_hot_heads_to_tau_and_leaves_the_rest():
  x, p = _x(), _gqa_params()
  before = _gqa_logits(p, x, 2)
  s_max = before.reshape(8, -1).max(-1)
  hot = s_max > TAU
  assert hot.tolist() == [i in (1, 6) for i in range(8)], s_max
  clipped = qk_clip.clip_gqa(p, qk_clip.clip_factors(s_max, TAU), num_kv_heads=2)
  after = _gqa_logits(clipped, x, 2)
  new_max = after.reshape(8, -1).max(-1)
  np.testing.assert_allclose(new_max[hot], TAU, rtol=1e-2)
  np.testing.assert_allclose(after[~hot], before[~hot], rtol=1e-5, atol=1e-4)


def test_gqa_clip_handles_stacked_layers():
  x, p = _x(), _gqa_params()
  stacked = jax.tree.map(lambda a: jnp.stack([a, a * 0.01]), p)  # layer 1 stays cool
  s_max = jnp.stack(
    [
      _gqa_logits(jax.tree.map(lambda a: a[i], stacked), x, 2).reshape(8, -1).max(-1)
      for i in range(2)
    ]
  )
  clipped = qk_clip.clip_gqa(stacked, qk_clip.clip_factors(s_max, TAU), num_kv_heads=2)
  layer0 = jax.tree.map(lambda a: a[0], clipped)
  assert float(_gqa_logits(layer0, x, 2).max()) <= TAU * 1.01
  for name in p:  # the cool layer is untouched
    np.testing.assert_array_equal(clipped[name][1], stacked[name][1])


def _mla(h=4, lat=24, n=16, r=8, v=12, seed=2):
  keys = jax.random.split(jax.random.key(seed), 5)
  p = {
    "q_b_proj": jax.random.normal(keys[0], (lat, h, n + r)),
    "kv_b_proj": jax.random.normal(keys[1], (lat, h, n + v)),
  }
  boost = jnp.ones(h).at[2].set(6.0)
  p["q_b_proj"] = p["q_b_proj"] * boost[None, :, None]
  c_q = jax.random.normal(keys[2], (B, S, lat))  # the normed query latent
  c_kv = jax.random.normal(keys[3], (B, S, lat))  # the normed kv latent
  k_pe = 3.0 * jax.random.normal(keys[4], (B, S, r))  # shared RoPE key (one head)
  return p, (c_q, c_kv, k_pe), n


def _mla_logits(p, inputs, n):
  c_q, c_kv, k_pe = inputs
  q = jnp.einsum("bsl,lhd->hbsd", c_q, p["q_b_proj"])
  kv = jnp.einsum("bsc,chd->hbsd", c_kv, p["kv_b_proj"])
  q_nope, q_pe = q[..., :n], q[..., n:]
  scale = 1 / np.sqrt(q.shape[-1])
  return (
    jnp.einsum("hbsn,hbtn->hbst", q_nope, kv[..., :n]) + jnp.einsum("hbsr,btr->hbst", q_pe, k_pe)
  ) * scale, kv[..., n:]


def test_mla_clip_scales_nope_by_root_gamma_and_rope_by_gamma():
  p, inputs, n = _mla()
  before, values = _mla_logits(p, inputs, n)
  s_max = before.reshape(4, -1).max(-1)
  hot = s_max > TAU
  assert hot.tolist() == [False, False, True, False], s_max
  clipped = qk_clip.clip_mla(p, qk_clip.clip_factors(s_max, TAU), nope_dim=n)
  after, new_values = _mla_logits(clipped, inputs, n)
  np.testing.assert_allclose(after.reshape(4, -1).max(-1)[hot], TAU, rtol=1e-2)
  np.testing.assert_allclose(after[~hot], before[~hot], rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(new_values, values)  # values untouched
  # The clipped head's logits shrink by exactly gamma, both parts together.
  gamma = float(TAU / s_max[2])
  np.testing.assert_allclose(after[2], gamma * before[2], rtol=1e-4, atol=1e-3)


def test_heads_under_tau_get_factor_one():
  gamma = qk_clip.clip_factors(jnp.array([0.0, 50.0, 100.0, 400.0]), TAU)
  np.testing.assert_allclose(gamma, [1.0, 1.0, 1.0, 0.25])


def _max_logits(trainer, model_cfg, batch):
  graphdef = state_lib.abstract(model_cfg)[0]
  model = nnx.merge(graphdef, trainer.state["params"], trainer.state["model_state"])
  _, aux = model(batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"])
  return np.asarray(by_layer(model_cfg, aux, "attn", "max_logits"))  # [layers, heads]


def _clip_step(family, tmp_path):
  """(trainer before, trainer after one clip step, batch, max logits before, tau).

  The step runs at a learning rate of 1e-12: it is just the clip."""
  config = small_train_config(family, steps=10, log_every=1)
  config.optim.update(lr=1e-12, warmup_steps=1)
  config.compute.scan_layers = "scan"  # each scanned layer clipped by its own row
  probe = Trainer(config, str(tmp_path / "probe"))
  batch = probe.put(next(probe.data_iter))
  before = _max_logits(probe, probe.model_cfg, batch)
  tau = float(np.median(before))  # about half the heads are over it
  config.optim.qk_clip_tau = tau
  trainer = Trainer(config, str(tmp_path / "clip"))
  trainer.state, metrics = trainer._train_step(trainer.state, batch)
  assert float(metrics["max_logit"]) == pytest.approx(before.max(), rel=1e-5)
  return probe, trainer, batch, before, tau


def test_train_step_clips_every_scanned_gqa_layer_by_its_own_row(tmp_path):
  probe, trainer, batch, before, tau = _clip_step("llama3", tmp_path)  # 8 heads, 2 kv heads
  gamma = np.minimum(1.0, tau / before)  # [layers, heads], all layers scanned
  worst = gamma.reshape(len(gamma), 2, 4).min(-1)  # [layers, kv heads]
  want_q = gamma / np.repeat(np.sqrt(worst), 4, axis=-1)
  attn = lambda t: t.state["params"]["stack"]["blocks"][0]["attn"]
  ratio = lambda name, axis: np.mean(
    np.asarray(attn(trainer)[name]) / np.asarray(attn(probe)[name]), axis=axis
  )
  np.testing.assert_allclose(ratio("q_proj", (1, 3)), want_q, rtol=1e-5)  # [layers, e, h, d]
  np.testing.assert_allclose(ratio("k_proj", (1, 3)), np.sqrt(worst), rtol=1e-5)
  # The first layer sees the same input as before: its hot heads land on tau exactly.
  after = _max_logits(trainer, trainer.model_cfg, batch)
  hot = before[0] > tau
  assert hot.any() and (~hot).any()
  np.testing.assert_allclose(after[0][hot], tau, rtol=1e-4)
  np.testing.assert_allclose(after[0][~hot], before[0][~hot], rtol=1e-5)


def test_train_step_clips_mla_layers(tmp_path):
  probe, trainer, batch, before, tau = _clip_step("deepseek_v3", tmp_path)
  after = _max_logits(trainer, trainer.model_cfg, batch)
  hot = before[0] > tau  # layer 0 (the dense prefix layer) sees the same input as before
  assert hot.any() and (~hot).any()
  np.testing.assert_allclose(after[0][hot], tau, rtol=1e-4)
  np.testing.assert_allclose(after[0][~hot], before[0][~hot], rtol=1e-5)
  # Later layers' inputs moved with the clip above them; all still come down.
  assert after.max() < before.max() and after.max() <= tau * 1.05


@pytest.mark.parametrize("family", ["deepseek_v3", "llama3"])
def test_updated_measure_holds_the_returned_weights_at_tau(family, tmp_path):
  """At a real learning rate the update itself moves the logits; with
  qk_clip_measure='updated' the clip answers the updated weights, so the first
  layer's hot heads (same input after the clip) land on tau on the step's batch,
  where the forward's pre-update maxima leave them off it."""
  config = small_train_config(family, steps=10, log_every=1)
  config.optim.update(name="muon", lr=5e-2, warmup_steps=0, schedule="constant")
  after = {}
  for measure in ("none", "forward", "updated"):  # none: the update without a clip
    config.optim.qk_clip_measure = "forward" if measure == "none" else measure
    trainer = Trainer(config, str(tmp_path / measure))
    if measure == "none":
      batch = trainer.put(next(trainer.data_iter))
    trainer.state, _ = trainer._train_step(trainer.state, batch)
    after[measure] = _max_logits(trainer, trainer.model_cfg, batch)
    if measure == "none":  # half the first layer's heads end the update over tau
      config.optim.qk_clip_tau = tau = float(np.median(after["none"][0]))
  hot = after["none"][0] > tau  # over tau after the update
  assert hot.any() and (~hot).any()
  np.testing.assert_allclose(after["updated"][0][hot], tau, rtol=1e-4)
  np.testing.assert_allclose(after["updated"][0][~hot], after["none"][0][~hot], rtol=1e-5)
  assert np.abs(after["forward"][0][hot] / tau - 1).max() > 1e-2  # the update moved them


def test_updated_measure_sees_the_steps_new_router_biases(tmp_path):
  """The aux-loss-free bias update moves tokens between experts, so the input of
  every layer above an MoE layer (here the MTP block's attention): the updated
  measure runs after it, so every layer of what the step returns holds tau."""
  config = small_train_config("deepseek_v3", steps=10, log_every=1)
  config.optim.update(name="muon", lr=5e-2, warmup_steps=0, schedule="constant")
  config.objective.moe_bias_update_rate = 0.1
  trainer = Trainer(config, str(tmp_path / "none"))
  batch = trainer.put(next(trainer.data_iter))
  trainer.state, _ = trainer._train_step(trainer.state, batch)
  unclipped = _max_logits(trainer, trainer.model_cfg, batch)  # [dense, moe, mtp layer, heads]
  config.optim.update(qk_clip_tau=float(np.median(unclipped[1:])), qk_clip_measure="updated")
  trainer = Trainer(config, str(tmp_path / "clip"))
  trainer.state, _ = trainer._train_step(trainer.state, batch)
  after = _max_logits(trainer, trainer.model_cfg, batch)
  tau = config.optim.qk_clip_tau
  assert (unclipped[2] > tau).any()
  np.testing.assert_array_less(after / tau, 1 + 1e-3)  # measured before the bias step: +1.9%


def test_qk_clip_measure_is_checked(tmp_path):
  config = small_train_config("deepseek_v3")
  config.optim.update(qk_clip_tau=100.0, qk_clip_measure="after")
  with pytest.raises(ValueError, match="optim.qk_clip_measure='after'"):
    Trainer(config, str(tmp_path))


def test_qk_clip_with_qk_norm_is_one_clear_error(tmp_path):
  config = small_train_config("qwen3")
  config.optim.qk_clip_tau = 100.0
  with pytest.raises(ValueError, match="model.qk_norm='head' undoes"):
    Trainer(config, str(tmp_path))
