"""QK-Clip, the clip half of MuonClip (Kimi K2): after the optimizer step,
every head whose largest pre-softmax logit S_h exceeded tau gets its query and
key weights rescaled so that logit shrinks by gamma_h = min(1, tau / S_h).

GQA / MHA: the shared key head of a group is scaled by sqrt(gamma_min), the
group's worst factor, and each query head by gamma_h / sqrt(gamma_min), so
every head's logits scale by exactly its own gamma_h (1 for heads that stayed
under tau). MLA: the no-RoPE query and key parts each by sqrt(gamma_h), the
RoPE query part by gamma_h, the shared RoPE key (one head for all) untouched;
values are never touched. Biases scale with their weights.

Arrays may carry leading stack axes (scanned layers): gamma is [..., heads]
with the same leading axes. Letters: h query heads, k kv heads, n no-RoPE
head dim, r RoPE head dim, v value head dim.
"""

import jax.numpy as jnp

from modeling.attention.mla import MLA


def clip_factors(max_logits, tau: float):
  """gamma = min(1, tau / S) per head; S <= 0 (no logits seen) gives 1."""
  s = jnp.asarray(max_logits, jnp.float32)
  return jnp.where(s > tau, tau / jnp.maximum(s, 1e-30), 1.0)


def clip_gqa(p: dict, gamma, num_kv_heads: int) -> dict:
  """p: q_proj [.., e, h, d], k_proj [.., e, k, d], optional q_bias [.., h, d],
  k_bias [.., k, d] -> the same dict with clipped heads rescaled."""
  h = gamma.shape[-1]
  worst = gamma.reshape(gamma.shape[:-1] + (num_kv_heads, h // num_kv_heads)).min(-1)  # [.., k]
  q_factor = gamma / jnp.repeat(jnp.sqrt(worst), h // num_kv_heads, axis=-1)
  k_factor = jnp.sqrt(worst)
  out = dict(p)
  out["q_proj"] = _per_head_dim(p["q_proj"], q_factor[..., None])
  out["k_proj"] = _per_head_dim(p["k_proj"], k_factor[..., None])
  if "q_bias" in p:
    out["q_bias"] = _per_head_dim(p["q_bias"], q_factor[..., None])
    out["k_bias"] = _per_head_dim(p["k_bias"], k_factor[..., None])
  return out


def clip_mla(p: dict, gamma, nope_dim: int) -> dict:
  """p: the query projection (q_b_proj [.., l, h, n + r] or q_proj [.., e, h, n + r])
  and kv_b_proj [.., c, h, n + v] -> the same dict with clipped heads rescaled."""
  root = jnp.sqrt(gamma)[..., None]  # [.., h, 1]
  out = dict(p)
  q_name = "q_b_proj" if "q_b_proj" in p else "q_proj"
  q, kv = p[q_name], p["kv_b_proj"]
  rope_dim, value_dim = q.shape[-1] - nope_dim, kv.shape[-1] - nope_dim
  q_factor = jnp.concatenate(  # no-RoPE part by sqrt(gamma), RoPE part by gamma
    [jnp.broadcast_to(root, root.shape[:-1] + (nope_dim,)),
     jnp.broadcast_to(gamma[..., None], gamma.shape + (rope_dim,))], axis=-1,
  )  # fmt: skip
  kv_factor = jnp.concatenate(  # no-RoPE key part by sqrt(gamma), values untouched
    [jnp.broadcast_to(root, root.shape[:-1] + (nope_dim,)),
     jnp.ones(gamma.shape + (value_dim,), root.dtype)], axis=-1,
  )  # fmt: skip
  out[q_name] = _per_head_dim(q, q_factor)
  out["kv_b_proj"] = _per_head_dim(kv, kv_factor)
  return out


def _per_head_dim(w, factor):
  """w [.., (x,) h, d] * factor [.., h, d or 1] (stack axes leading in both)."""
  stack = factor.ndim - 2
  shape = factor.shape[:stack] + (1,) * (w.ndim - stack - 2) + factor.shape[stack:]
  return (w * factor.reshape(shape)).astype(w.dtype)


def clip_layer(attn, max_logits, tau: float):
  """In place on one attention module of a merged model: QK-clip its heads.
  max_logits: [heads], or [periods, heads] for a scanned layer (like its params)."""
  gamma = clip_factors(max_logits, tau)
  cfg = attn.cfg
  if isinstance(attn, MLA):
    names = ["q_b_proj" if cfg.q_lora_rank > 0 else "q_proj", "kv_b_proj"]
    clipped = clip_mla({n: getattr(attn, n)[...] for n in names}, gamma, cfg.qk_nope_head_dim)
  else:
    names = ["q_proj", "k_proj"] + (["q_bias", "k_bias"] if cfg.qkv_bias else [])
    clipped = clip_gqa({n: getattr(attn, n)[...] for n in names}, gamma, cfg.num_kv_heads)
  for name, value in clipped.items():
    getattr(attn, name)[...] = value
