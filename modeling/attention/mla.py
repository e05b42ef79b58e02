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

import dataclasses
import math

import jax.numpy as jnp
from flax import nnx

from modeling.attention import cache as kv_cache
from modeling.attention import sparse
from modeling.attention.dot_product import attend, dot_product_attention
from modeling.attention.sparse import IndexerConfig
from modeling.layers import params, rope
from modeling.layers.fp8 import Fp8, project
from modeling.layers.norms import NormConfig, RMSNorm
from modeling.layers.rope import RopeConfig
from pallas_kernels.mla import ops as mla_ops
from pallas_kernels.sparse_attention import ops as sparse_ops
from pallas_kernels.sparse_attention import reference as sparse_reference

# Queries per step of the XLA sparse path: bounds its gathered keys to
# SPARSE_CHUNK * topk rows per batch row.
SPARSE_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class MlaConfig:
  """Multi-head latent attention (low-rank q, jointly compressed kv, decoupled rope key)."""

  embed_dim: int
  num_heads: int
  q_lora_rank: int  # 0 = plain query projection, no low-rank path.
  kv_lora_rank: int
  qk_nope_head_dim: int
  qk_rope_head_dim: int
  v_head_dim: int
  scale: float  # softmax scale, (nope+rope)**-0.5 times YaRN's mscale**2 when on.
  rope: RopeConfig | None  # rotary_dim = qk_rope_head_dim; None = NoPE (Kimi Linear).
  norm: NormConfig = NormConfig()
  absorbed: bool = False  # latent-space (decode) form: W_UK folded into q, W_UV after.
  window: int = 0
  kernel: str = "xla"  # attention core (modeling/attention/kernels.py decides).
  init_std: float = 0.02
  fp8: Fp8 | None = None  # FP8-style projections (not the absorbed attention core).
  indexer: IndexerConfig | None = None  # DeepSeek Sparse Attention; None = dense.


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
    if cfg.rope is not None and cfg.rope.rotary_dim != cfg.qk_rope_head_dim:
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
    if cfg.indexer is not None:
      self.indexer = sparse.Indexer(cfg.indexer, e, l, rngs=rngs, param_dtype=param_dtype)

  def _rope(self, x, positions):  # x: [b, s, heads, r]
    if self.cfg.rope is None:  # NoPE: the rope dims stay as projected
      return x
    return rope.apply(x, positions, self.cfg.rope)

  def _query(self, x, positions):
    """x: [b, s, e] -> (c_q [b, s, l] or None, q_nope [b, s, h, n], q_pe [b, s, h, r])."""
    fp8, c_q = self.cfg.fp8, None
    if self.cfg.q_lora_rank > 0:
      c_q = self.q_a_norm(project(x, self.q_a_proj[...], fp8))  # [b, s, l]
      q = project(c_q, self.q_b_proj[...], fp8)  # [b, s, h, d]
    else:
      q = project(x, self.q_proj[...], fp8)
    q_nope, q_pe = jnp.split(q, [self.cfg.qk_nope_head_dim], axis=-1)
    return c_q, q_nope, self._rope(q_pe, positions)

  def _latent(self, x, positions):  # x: [b, s, e] -> c_kv [b, s, c], k_pe [b, s, r]
    kv = project(x, self.kv_a_proj[...], self.cfg.fp8)  # [b, s, c + r]
    c_kv, k_pe = jnp.split(kv, [self.cfg.kv_lora_rank], axis=-1)
    k_pe = self._rope(k_pe[:, :, None, :], positions)[:, :, 0]  # one head, shared by all
    return self.kv_a_norm(c_kv), k_pe

  def __call__(self, x, ctx):
    """x: [b, s, e] -> (out [b, s, e], stats): `max_logits` [h], the largest
    pre-softmax logit per head; with an indexer, `indexer_kl` (its loss)."""
    positions, segment_ids = ctx.positions, ctx.segment_ids
    c_q, q_nope, q_pe = self._query(x, positions)
    c_kv, k_pe = self._latent(x, positions)
    if ctx.decode:
      return self._decode(x, ctx, c_q, q_nope, q_pe, c_kv, k_pe)
    q, k, v = (self._absorbed_qkv if self.cfg.absorbed else self._naive_qkv)(
      q_nope, q_pe, c_kv, k_pe
    )
    stats = {}
    if self.cfg.indexer is None:
      out, stats["max_logits"] = self._dense(q, k, v, segment_ids)
    else:
      out, stats["max_logits"], stats["indexer_kl"] = self._indexed(
        x, c_q, positions, segment_ids, q, k, v
      )
    if self.cfg.absorbed:
      out = self._values(out)
    if ctx.cache_len > 0:  # a prefill: this layer's cache
      size = kv_cache.slots(self.cfg.window, 0, ctx.cache_len)
      entries = self._cached(x, positions, c_kv, k_pe)
      stats["cache"] = kv_cache.constrain(kv_cache.fill(entries, segment_ids, size))
    out = project(out.astype(x.dtype), self.o_proj[...], self.cfg.fp8, n_in=2)  # [b, s, e]
    return out, stats

  def _values(self, out):
    """Latent outputs [b, s, h, c] -> values [b, s, h, v] through W_UV (absorbed form)."""
    w_uv = self.kv_b_proj[...].astype(jnp.float32)[..., self.cfg.qk_nope_head_dim :]
    return jnp.einsum("bshc,chv->bshv", out, w_uv)

  def _cached(self, x, positions, c_kv, k_pe) -> dict:
    """What a decode cache keeps per position: the latent key [c_kv | k_pe]
    [b, s, 1, c + r] (576 wide in V3, against 128 heads x 2 x 128 for GQA-style
    K/V), and with DSA the indexer's keys [b, s, 1, d]."""
    entries = {"k": jnp.concatenate([c_kv, k_pe], axis=-1)[:, :, None, :]}
    if self.cfg.indexer is not None:
      entries["index_k"] = self.indexer.keys(x, positions)[:, :, None, :]
    return entries

  def _decode(self, x, ctx, c_q, q_nope, q_pe, c_kv, k_pe):
    """New positions against the cache (after writing them into it), in the
    absorbed form whatever `absorbed` says: MQA of [q_nope W_UK, q_pe] over the
    cached latent keys, W_UV after. With DSA in its sparse stage each query sees
    only the indexer's top-k cached keys. -> (out [b, q, e], {"cache": ...})."""
    cfg, positions = self.cfg, ctx.positions
    cache = kv_cache.append(ctx.cache, self._cached(x, positions, c_kv, k_pe), positions)
    q, _, _ = self._absorbed_qkv(q_nope, q_pe, c_kv, k_pe)
    mask = kv_cache.mask(cache, positions, cfg.window)  # [b, 1, 1, q, T]
    if cfg.indexer is not None and cfg.indexer.stage == "sparse":
      scores = self.indexer.scores(x, c_q, positions, cache["index_k"][:, :, 0], mask[:, 0, 0])
      slots = scores.shape[-1]
      chosen = sparse.select(scores, min(cfg.indexer.topk, slots))  # [b, q, k]
      mask &= jnp.any(chosen[..., None] == jnp.arange(slots), axis=-2)[:, None, None]
    keys = cache["k"].astype(jnp.float32)
    out, _ = attend(q, keys, keys[..., : cfg.kv_lora_rank], mask, cfg.scale, 0.0, None)
    out = project(self._values(out).astype(x.dtype), self.o_proj[...], cfg.fp8, n_in=2)
    return out, {"cache": kv_cache.constrain(cache)}

  def _naive_qkv(self, q_nope, q_pe, c_kv, k_pe):
    """Per-head q, k [b, s, h, n + r] and v [b, s, h, v] (d_qk != d_v)."""
    kv = project(c_kv, self.kv_b_proj[...], self.cfg.fp8)  # [b, s, h, n + v]
    k_nope, v = jnp.split(kv, [self.cfg.qk_nope_head_dim], axis=-1)
    k_pe = jnp.broadcast_to(k_pe[:, :, None, :], q_pe.shape)  # [b, s, h, r]
    q = jnp.concatenate([q_nope, q_pe], axis=-1)
    return q, jnp.concatenate([k_nope, k_pe], axis=-1), v

  def _absorbed_qkv(self, q_nope, q_pe, c_kv, k_pe):
    """MQA over the latent, fp32: q = [q_nope W_UK, q_pe] [b, s, h, c + r], one key
    head [c_kv, k_pe] [b, s, 1, c + r] whose values are c_kv itself [b, s, 1, c]."""
    f32 = jnp.float32
    w_uk = self.kv_b_proj[...].astype(f32)[..., : self.cfg.qk_nope_head_dim]  # [c, h, n]
    q_lat = jnp.einsum("bshn,chn->bshc", q_nope.astype(f32), w_uk)
    q = jnp.concatenate([q_lat, q_pe.astype(f32)], axis=-1)
    k = jnp.concatenate([c_kv, k_pe], axis=-1).astype(f32)[:, :, None, :]
    return q, k, c_kv.astype(f32)[:, :, None, :]

  def _dense(self, q, k, v, segment_ids):
    """Causal attention over every key -> (out [b, s, h, v or c], max_logits [h])."""
    cfg = self.cfg
    if cfg.absorbed and cfg.kernel != "xla":  # the cache row [c_kv, k_pe] read once as K and V
      c = cfg.kv_lora_rank
      return mla_ops.mla_attention(
        q[..., :c], q[..., c:], k[:, :, 0, :c], k[:, :, 0, c:], segment_ids=segment_ids,
        scale=cfg.scale, window=cfg.window, implementation="pallas",
        interpret=cfg.kernel == "pallas_interpret",
      )  # fmt: skip
    return dot_product_attention(
      q, k, v, segment_ids=segment_ids, scale=cfg.scale, window=cfg.window, kernel=cfg.kernel
    )

  def _indexed(self, x, c_q, positions, segment_ids, q, k, v):
    """DeepSeek Sparse Attention -> (out, max_logits [h], indexer KL)."""
    cfg, icfg = self.cfg, self.cfg.indexer
    valid = sparse.valid_keys(segment_ids, cfg.window)
    scores = self.indexer(x, c_q, positions, valid)  # [b, s, t]
    if icfg.stage == "warmup" or icfg.topk >= x.shape[1]:  # every key is selected: dense
      out, max_logits = self._dense(q, k, v, segment_ids)
      target = sparse.dense_probs(q, k, valid=valid, scale=cfg.scale)
      return out, max_logits, sparse.kl_loss(target, scores, segment_ids)
    indices = sparse.select(scores, icfg.topk)  # [b, s, topk]
    kernel = "reference" if cfg.kernel == "xla" else "pallas"
    out, max_logits = sparse_ops.sparse_attention(
      q, k, v, indices, scale=cfg.scale, chunk=SPARSE_CHUNK, implementation=kernel,
      interpret=cfg.kernel == "pallas_interpret",
    )  # fmt: skip
    target = sparse_reference.slot_probs(q, k, indices, scale=cfg.scale, chunk=SPARSE_CHUNK)
    kl = sparse.kl_loss(target, sparse.slot_scores(scores, indices), segment_ids)
    return out, max_logits, kl
