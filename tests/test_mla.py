"""Specs for modeling/attention/mla.py: the absorbed (MQA) form equals the naive
(MHA) form, and one MLA layer matches Hugging Face's DeepseekV3Attention.

HF -> ours weight mapping (torch Linear weights are [out, in]; h heads,
e embed, l q_lora, c kv_lora, n nope, r rope, v value dims, d = n + r):

  q_a_proj.weight            [l, e]          -> q_a_proj   [e, l]        = W.T
  q_a_layernorm.weight       [l]             -> q_a_norm.scale
  q_b_proj.weight            [h*d, l]        -> q_b_proj   [l, h, d]     = W.T.reshape(l, h, d)
  q_proj.weight (no q_lora)  [h*d, e]        -> q_proj     [e, h, d]     = W.T.reshape(e, h, d)
  kv_a_proj_with_mqa.weight  [c + r, e]      -> kv_a_proj  [e, c + r]    = W.T
  kv_a_layernorm.weight      [c]             -> kv_a_norm.scale
  kv_b_proj.weight           [h*(n+v), c]    -> kv_b_proj  [c, h, n + v] = W.T.reshape(c, h, n + v)
  o_proj.weight              [e, h*v]        -> o_proj     [h, v, e]     = W.T.reshape(h, v, e)

Config: rope_interleave -> MlaConfig.rope.interleave; the HF latent norms use
eps 1e-6 whatever rms_norm_eps says; scale = mla_softmax_scale(n + r, factor,
mscale_all_dim); YaRN's cos/sin factor is yarn_mscale(f, mscale) / yarn_mscale(f,
mscale_all_dim) when both are set.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_dsv3

from modeling.attention.dot_product import dot_product_attention
from modeling.attention.mla import MLA, MlaConfig, mla_softmax_scale, yarn_mscale
from modeling.context import Context
from modeling.layers.rope import RopeConfig

E, H, Q_LORA, KV_LORA, NOPE, ROPE, V = 64, 4, 16, 32, 16, 8, 16
YARN = {"factor": 4.0, "original_max_position": 16, "mscale": 1.0, "mscale_all_dim": 0.8}


def mla_config(q_lora_rank=Q_LORA, yarn=False, rope_interleave=False, **overrides) -> MlaConfig:
  if yarn:
    f = YARN["factor"]
    rope = RopeConfig(
      rotary_dim=ROPE,
      scaling="yarn",
      factor=f,
      original_max_position=YARN["original_max_position"],
      attention_factor=yarn_mscale(f, YARN["mscale"]) / yarn_mscale(f, YARN["mscale_all_dim"]),
    )
    scale = mla_softmax_scale(NOPE + ROPE, f, YARN["mscale_all_dim"])
  else:
    rope, scale = RopeConfig(rotary_dim=ROPE), mla_softmax_scale(NOPE + ROPE, 1.0, 0.0)
  rope = dataclasses.replace(rope, interleave=rope_interleave)
  cfg = MlaConfig(E, H, q_lora_rank, KV_LORA, NOPE, ROPE, V, scale=scale, rope=rope)
  return dataclasses.replace(cfg, **overrides)


def randomise_norms(model: MLA, seed: int = 0):
  """Norm scales away from 1, so a missing or misplaced norm cannot hide."""
  key = jax.random.key(seed)
  for _, norm in nnx.iter_graph(model):
    if isinstance(norm, nnx.Module) and hasattr(norm, "scale"):
      key, sub = jax.random.split(key)
      norm.scale[...] = 1.0 + 0.3 * jax.random.normal(sub, norm.scale.shape)


def packed(lengths_per_row, seq):
  """segment_ids, positions [b, seq] for rows packed with documents of the given lengths."""
  seg = np.zeros((len(lengths_per_row), seq), np.int32)
  pos = np.zeros_like(seg)
  for b, lengths in enumerate(lengths_per_row):
    assert sum(lengths) == seq, lengths
    starts = np.cumsum([0] + list(lengths))
    for i, (lo, hi) in enumerate(itertools.pairwise(starts)):
      seg[b, lo:hi], pos[b, lo:hi] = i + 1, np.arange(hi - lo)
  return jnp.asarray(seg), jnp.asarray(pos)


def test_value_head_dim_may_differ_from_query_head_dim():
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(2, 9, 4, 8)), jnp.float32) for _ in range(2))
  v = jnp.asarray(rng.normal(size=(2, 9, 4, 5)), jnp.float32)
  seg, _ = packed([[4, 5], [9]], 9)
  got, _ = dot_product_attention(q, k, v, segment_ids=seg, scale=0.3)
  padded = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, 3)))
  want = dot_product_attention(q, k, padded, segment_ids=seg, scale=0.3)[0][..., :5]
  assert got.shape == (2, 9, 4, 5)
  np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("q_lora_rank", [Q_LORA, 0])
@pytest.mark.parametrize("window", [0, 4])
def test_absorbed_mla_equals_naive_mla(q_lora_rank, window):
  cfg = mla_config(q_lora_rank, yarn=True, window=window, rope_interleave=True)
  naive = MLA(cfg, rngs=nnx.Rngs(0))
  randomise_norms(naive)
  absorbed = MLA(dataclasses.replace(cfg, absorbed=True), rngs=nnx.Rngs(1))
  nnx.update(absorbed, nnx.state(naive))
  seg, pos = packed([[5, 7, 1], [13]], 13)  # odd lengths, packed documents
  x = jax.random.normal(jax.random.key(2), (2, 13, E))
  want, want_stats = naive(x, Context(pos, seg))
  got, got_stats = absorbed(x, Context(pos, seg))
  assert got.shape == (2, 13, E)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # same logits, latent space
  np.testing.assert_allclose(
    got_stats["max_logits"], want_stats["max_logits"], rtol=1e-4
  )  # same logits, latent space


def hf_attention(q_lora_rank: int, yarn: bool, interleave: bool):
  """A tiny float32 eager DeepseekV3Attention and its rotary embedding, all weights random."""
  rope_parameters = {"rope_type": "default", "rope_theta": 10_000.0}
  if yarn:
    rope_parameters = {
      "rope_type": "yarn",
      "rope_theta": 10_000.0,
      "factor": YARN["factor"],
      "original_max_position_embeddings": YARN["original_max_position"],
      "mscale": YARN["mscale"],
      "mscale_all_dim": YARN["mscale_all_dim"],
    }
  config = transformers.DeepseekV3Config(
    hidden_size=E,
    num_attention_heads=H,
    num_key_value_heads=H,
    q_lora_rank=q_lora_rank or None,
    kv_lora_rank=KV_LORA,
    qk_nope_head_dim=NOPE,
    qk_rope_head_dim=ROPE,
    v_head_dim=V,
    max_position_embeddings=64,
    rope_parameters=rope_parameters,
    rope_interleave=interleave,
    dtype="float32",
  )
  config._attn_implementation = "eager"
  torch.manual_seed(0)
  attention = hf_dsv3.DeepseekV3Attention(config, layer_idx=0).float().eval()
  with torch.no_grad():
    for name, p in attention.named_parameters():
      p.normal_(1.0 if "layernorm" in name else 0.0, 0.3 if "layernorm" in name else 0.1)
  return attention, hf_dsv3.DeepseekV3RotaryEmbedding(config)


def load_hf_attention(model: MLA, attention):
  """Copies HF DeepseekV3Attention weights into `model` (mapping in the module docstring)."""
  cfg, h = model.cfg, model.cfg.num_heads

  def w(linear):  # torch [out, in] -> [in, out]
    return jnp.asarray(linear.weight.detach().numpy().T)

  if cfg.q_lora_rank > 0:
    model.q_a_proj[...] = w(attention.q_a_proj)
    model.q_a_norm.scale[...] = jnp.asarray(attention.q_a_layernorm.weight.detach().numpy())
    model.q_b_proj[...] = w(attention.q_b_proj).reshape(cfg.q_lora_rank, h, -1)
  else:
    model.q_proj[...] = w(attention.q_proj).reshape(cfg.embed_dim, h, -1)
  model.kv_a_proj[...] = w(attention.kv_a_proj_with_mqa)
  model.kv_a_norm.scale[...] = jnp.asarray(attention.kv_a_layernorm.weight.detach().numpy())
  model.kv_b_proj[...] = w(attention.kv_b_proj).reshape(cfg.kv_lora_rank, h, -1)
  model.o_proj[...] = w(attention.o_proj).reshape(h, cfg.v_head_dim, cfg.embed_dim)


def hf_forward(attention, rotary, x: np.ndarray) -> np.ndarray:
  b, s, _ = x.shape
  positions = torch.arange(s)[None].expand(b, s)
  causal = torch.full((s, s), torch.finfo(torch.float32).min).triu(1)[None, None]
  hidden = torch.from_numpy(x)
  with torch.no_grad():
    out, _ = attention(hidden, rotary(hidden, positions), attention_mask=causal)
  return out.numpy()


@pytest.mark.parametrize("absorbed", [False, True])
@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("yarn", [False, True])
@pytest.mark.parametrize("q_lora_rank", [Q_LORA, 0])
def test_mla_matches_hf_deepseek_v3_attention(q_lora_rank, yarn, interleave, absorbed):
  attention, rotary = hf_attention(q_lora_rank, yarn, interleave)
  assert attention.scaling == pytest.approx(mla_config(q_lora_rank, yarn).scale, rel=1e-12)
  cfg = mla_config(q_lora_rank, yarn, rope_interleave=interleave, absorbed=absorbed)
  model = MLA(cfg, rngs=nnx.Rngs(0))
  load_hf_attention(model, attention)
  b, s = 2, 11
  x = np.random.default_rng(0).normal(size=(b, s, E)).astype(np.float32)
  positions = jnp.broadcast_to(jnp.arange(s), (b, s))
  got, _ = model(jnp.asarray(x), Context(positions, jnp.ones((b, s), jnp.int32)))
  want = hf_forward(attention, rotary, x)
  assert np.abs(want).max() > 0.1  # the comparison is not between two near-zero tensors
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_rope_rotary_dim_must_match_rope_head_dim():
  cfg = mla_config(rope=RopeConfig(rotary_dim=0))
  with pytest.raises(ValueError, match="rotary_dim=0"):
    MLA(cfg, rngs=nnx.Rngs(0))
