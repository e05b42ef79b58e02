"""Multi-head latent attention (DeepSeek-V2/V3 MLA).

The query goes through an optional low-rank bottleneck; keys and values are
rebuilt from one shared, normalised latent `c_kv`, plus a single RoPE key
`k_pe` broadcast to every head. Two forms share the same params:

- naive (MHA, training/prefill): expand `c_kv` to per-head k_nope and v,
  concatenate [nope | rope] and run ordinary attention (d_qk != d_v);
- absorbed (MQA, decode): fold W_UK into the query and W_UV after attention,
  so attention runs over the 576-wide latent [c_kv | k_pe] with one kv head.

Letters: b batch, s/q/t positions, e embed, l q_lora rank, c kv_lora rank,
h heads, d nope+rope (qk head dim), n nope, r rope, v value head dim.
"""

import math

import jax.numpy as jnp
from flax import nnx

from modeling.attention.dot_product import dot_product_attention
from modeling.config import MlaConfig
from modeling.layers import params, rope
from modeling.layers.fp8 import project
from modeling.layers.norms import RMSNorm
from pallas_kernels.mla import ops as mla_ops


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
  """YaRN's attention temperature 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1)."""
  return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


def mla_softmax_scale(qk_head_dim: int, rope_scaling_factor: float, mscale_all_dim: float) -> float:
  """qk_head_dim**-0.5, times yarn_mscale(factor, mscale_all_dim)**2 when mscale_all_dim > 0.

  Reproduces HF deepseek_v3's `yarn_apply_mscale`; pass factor 1 (or mscale_all_dim 0)
  when RoPE is unscaled. V3 (192, 40, 1.0) gives 192**-0.5 * 1.3689**2.
  """
  scale = qk_head_dim**-0.5
  if mscale_all_dim:
    scale *= yarn_mscale(rope_scaling_factor, mscale_all_dim) ** 2
  return scale


class MLA(nnx.Module):
  def __init__(self, cfg: MlaConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    if cfg.rope.rotary_dim != cfg.qk_rope_head_dim:
      raise ValueError(
        f"MlaConfig.rope.rotary_dim={cfg.rope.rotary_dim} must equal "
        f"qk_rope_head_dim={cfg.qk_rope_head_dim}: the whole rope part of a head rotates"
      )
    self.cfg = cfg
    e, h, std = cfg.embed_dim, cfg.num_heads, cfg.init_std
    l, c, n, r, v = (
      cfg.q_lora_rank,
      cfg.kv_lora_rank,
      cfg.qk_nope_head_dim,
      cfg.qk_rope_head_dim,
      cfg.v_head_dim,
    )

    def normal(shape, axes):
      return params.normal(rngs, shape, axes, std, param_dtype)

    if l > 0:
      self.q_a_proj = normal((e, l), ("embed", "q_lora"))
      self.q_a_norm = RMSNorm(l, cfg.norm, param_dtype=param_dtype, axis_name="q_lora")
      self.q_b_proj = normal((l, h, n + r), ("q_lora", "heads", "head_dim"))
    else:
      self.q_proj = normal((e, h, n + r), ("embed", "heads", "head_dim"))
    self.kv_a_proj = normal((e, c + r), ("embed", "kv_lora"))
    self.kv_a_norm = RMSNorm(c, cfg.norm, param_dtype=param_dtype, axis_name="kv_lora")
    self.kv_b_proj = normal((c, h, n + v), ("kv_lora", "heads", "head_dim"))
    self.o_proj = normal((h, v, e), ("heads", "head_dim", "embed"))

  def _rope(self, x, positions):  # x: [b, s, heads, r]
    return rope.apply(x, positions, self.cfg.rope)

  def _query(self, x, positions):  # x: [b, s, e] -> q_nope [b, s, h, n], q_pe [b, s, h, r]
    fp8 = self.cfg.fp8
    if self.cfg.q_lora_rank > 0:
      c_q = self.q_a_norm(project(x, self.q_a_proj[...], fp8))  # [b, s, l]
      q = project(c_q, self.q_b_proj[...], fp8)  # [b, s, h, d]
    else:
      q = project(x, self.q_proj[...], fp8)
    q_nope, q_pe = jnp.split(q, [self.cfg.qk_nope_head_dim], axis=-1)
    return q_nope, self._rope(q_pe, positions)

  def _latent(self, x, positions):  # x: [b, s, e] -> c_kv [b, s, c], k_pe [b, s, r]
    kv = project(x, self.kv_a_proj[...], self.cfg.fp8)  # [b, s, c + r]
    c_kv, k_pe = jnp.split(kv, [self.cfg.kv_lora_rank], axis=-1)
    k_pe = self._rope(k_pe[:, :, None, :], positions)[:, :, 0]  # one head, shared by all
    return self.kv_a_norm(c_kv), k_pe

  def __call__(self, x, *, positions, segment_ids):
    """x: [b, s, e] -> (out [b, s, e], max pre-softmax logit per head [h])."""
    q_nope, q_pe = self._query(x, positions)
    c_kv, k_pe = self._latent(x, positions)
    attend = self._absorbed if self.cfg.absorbed else self._naive
    out, max_logits = attend(q_nope, q_pe, c_kv, k_pe, segment_ids)  # [b, s, h, v], [h]
    out = project(out.astype(x.dtype), self.o_proj[...], self.cfg.fp8, n_in=2)  # [b, s, e]
    return out, max_logits

  def _naive(self, q_nope, q_pe, c_kv, k_pe, segment_ids):
    cfg = self.cfg
    kv = project(c_kv, self.kv_b_proj[...], cfg.fp8)  # [b, s, h, n + v]
    k_nope, v = jnp.split(kv, [cfg.qk_nope_head_dim], axis=-1)  # [b, s, h, n], [b, s, h, v]
    k_pe = jnp.broadcast_to(k_pe[:, :, None, :], q_pe.shape)  # [b, s, h, r]
    q = jnp.concatenate([q_nope, q_pe], axis=-1)  # [b, s, h, d]
    k = jnp.concatenate([k_nope, k_pe], axis=-1)
    return dot_product_attention(
      q, k, v, segment_ids=segment_ids, scale=cfg.scale, window=cfg.window, kernel=cfg.kernel
    )

  def _absorbed(self, q_nope, q_pe, c_kv, k_pe, segment_ids):
    """MQA over the latent: logits = (q_nope W_UK) c_kv + q_pe k_pe, o = (p c_kv) W_UV; fp32."""
    cfg, f32 = self.cfg, jnp.float32
    w_uk, w_uv = jnp.split(self.kv_b_proj[...].astype(f32), [cfg.qk_nope_head_dim], axis=-1)
    q_lat = jnp.einsum("bshn,chn->bshc", q_nope.astype(f32), w_uk)  # [b, s, h, c]
    q = jnp.concatenate([q_lat, q_pe.astype(f32)], axis=-1)  # [b, s, h, c + r]
    if cfg.kernel != "xla":  # the cache row [c_kv, k_pe] read once as keys and values
      o_lat, max_logits = mla_ops.mla_attention(
        q_lat, q_pe.astype(f32), c_kv.astype(f32), k_pe.astype(f32), segment_ids=segment_ids,
        scale=cfg.scale, window=cfg.window, implementation="pallas",
        interpret=cfg.kernel == "pallas_interpret",
      )  # fmt: skip
      return jnp.einsum("bshc,chv->bshv", o_lat, w_uv), max_logits
    k = jnp.concatenate([c_kv, k_pe], axis=-1).astype(f32)[:, :, None, :]  # [b, t, 1, c + r]
    o_lat, max_logits = dot_product_attention(
      q,
      k,
      c_kv.astype(f32)[:, :, None, :],  # values are the latent itself: [b, t, 1, c]
      segment_ids=segment_ids,
      scale=cfg.scale,  # the qk head dim's scale, not (c + r)**-0.5
      window=cfg.window,
      kernel=cfg.kernel,
    )
    return jnp.einsum("bshc,chv->bshv", o_lat, w_uv), max_logits  # [b, s, h, v], [h]
