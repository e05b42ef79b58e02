"""Softmax attention: MHA/GQA/MQA with causal, sliding-window, chunked and
segment masks, QK-norm, biases, attention sinks, logit soft-capping and Llama 4's
NoPE temperature.

`dot_product_attention` is the one attention entry point; `Attention` is the
projection module around it. Letters: b batch, q/t query/key positions,
h heads, k kv heads, g query heads per kv head, d head_dim, v value head_dim,
e embed.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.attention import blockwise
from modeling.attention import cache as kv_cache
from modeling.layers import params, rope
from modeling.layers.fp8 import Fp8, project
from modeling.layers.norms import NormConfig, RMSNorm
from modeling.layers.rope import RopeConfig
from pallas_kernels.flash_attention import ops as flash_ops
from parallelism import context

QK_NORMS = ("none", "head", "full", "l2")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  scale: float
  window: int = 0  # 0 = global causal attention.
  chunk: int = 0  # > 0: keys only from the query's own block of `chunk` positions.
  rope: RopeConfig | None = None  # None = NoPE.
  qk_norm: str = "none"  # none | head | full | l2 (RMS over head_dim, no scale).
  temperature_scale: float = 0.0  # > 0: q *= 1 + scale*ln(1 + floor((pos+1)/floor)).
  temperature_floor: int = 8192
  norm: NormConfig = NormConfig()
  qkv_bias: bool = False
  out_bias: bool = False
  sinks: bool = False
  softcap: float = 0.0
  kernel: str = "xla"  # attention core (modeling/attention/kernels.py decides).
  gate: bool = False  # q_proj emits [query | gate] per head; output *= sigmoid(gate).
  v_norm: bool = False  # values RMS-normed over head_dim without a scale (Gemma 3n).
  # Gemma 3n's KV sharing: "store" keeps this layer's K/V for later layers of its
  # kind (window, chunk); "reuse" has no K/V projections and attends to those.
  kv_share: str = ""
  init_std: float = 0.02
  fp8: Fp8 | None = None  # FP8-style q/k/v/o projections.


def attention_mask(segment_ids, window: int = 0, chunk: int = 0, positions=None):
  """[b, 1, 1, q, t] bool: causal, same document, within `window` if > 0, and in
  the query's block of `chunk` positions if > 0 (blocks count from each document's
  position 0, so packed documents chunk as they would alone)."""
  seq = segment_ids.shape[1]
  idx = jnp.arange(seq)
  mask = (idx[None, :] <= idx[:, None])[None]  # key t <= query q
  if window > 0:
    mask &= (idx[:, None] - idx[None, :] < window)[None]
  if chunk > 0:
    block = (idx[None] if positions is None else positions) // chunk  # [b or 1, s]
    mask &= block[:, :, None] == block[:, None, :]
  same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]
  return (mask & same_doc)[:, None, None]


def dot_product_attention(
  q,
  k,
  v,
  *,
  segment_ids,
  scale: float,
  window: int = 0,
  chunk: int = 0,
  positions=None,
  softcap: float = 0.0,
  sinks=None,
  kernel: str = "xla",
):
  """q: [b, q, h, d]; k: [b, t, k, d]; v: [b, t, k, v]; segment_ids, positions: [b, s];
  sinks: [h] or None.

  Returns (out [b, q, h, v], max_logits [h]): the largest unmasked pre-softmax
  logit per head (before any softcap; no gradient), which MuonClip's QK-clip reads.
  K/V heads are shared by groups of h/k query heads without being repeated in
  memory. v's head dim may differ from d (MLA: 192 vs 128). kernel (decided by
  modeling/attention/kernels.py): "xla" (plain JAX: sequences longer than
  BLOCKWISE run `blockwise.attention`, O(seq x block) memory); "pallas" /
  "pallas_interpret" for the flash-attention kernels (not chunked); "cudnn" (no
  sinks, soft-cap or chunks; max_logits None).
  """
  if context.size() > 1:  # the sequence split over the mesh: every kernel's layers
    return context.attention(
      q, k, v, segment_ids=segment_ids, positions=positions, scale=scale, window=window,
      chunk=chunk, softcap=softcap, sinks=sinks,
    )  # fmt: skip
  if kernel == "cudnn":
    out = fused_attention(q, k, v, segment_ids=segment_ids, scale=scale, window=window)
    return out, None
  if kernel != "xla" and chunk == 0:
    return flash_ops.flash_attention(
      q, k, v, segment_ids=segment_ids, scale=scale, window=window, softcap=softcap,
      sinks=sinks, implementation="pallas", interpret=kernel == "pallas_interpret",
    )  # fmt: skip
  if q.shape[1] > BLOCKWISE:
    return blockwise.attention(
      q, k, v, segment_ids=segment_ids, positions=positions, scale=scale, window=window,
      chunk=chunk, softcap=softcap, sinks=sinks, block=BLOCKWISE,
    )  # fmt: skip
  mask = attention_mask(segment_ids, window, chunk, positions)  # [b, 1, 1, q, t]
  parts = [
    attend(q[:, a:b], k[:, c:b], v[:, c:b], mask[..., a:b, c:b], scale, softcap, sinks)
    for a, b, c in query_blocks(q.shape[1], window)
  ]
  out = jnp.concatenate([o for o, _ in parts], axis=1) if len(parts) > 1 else parts[0][0]
  # Per head; XLA drops it when nothing reads it (the step asks for it only for QK-clip
  # or logging.max_logit).
  return out, jnp.max(jnp.stack([m for _, m in parts]), axis=0)


# Longer sequences than this run blockwise (online softmax over key blocks of this
# many positions, a flash-attention backward): the [seq, seq] scores never exist.
BLOCKWISE = 512

# Up to BLOCKWISE positions the XLA path splits the queries into blocks, each
# attending only to the keys it can see (causal, and the window): the masked-out
# upper triangle of the logits is mostly never computed (3/8 of the work at 4 blocks, 7/16 at 8; more with a window).
# Blocks of at least MIN_QUERY_BLOCK positions, at most MAX_QUERY_BLOCKS of them
# (each is its own matmuls in the program: compile time grows with their number).
MIN_QUERY_BLOCK = 64
MAX_QUERY_BLOCKS = 8


def query_blocks(s: int, window: int = 0) -> list[tuple[int, int, int]]:
  """(first query, end of its queries and keys, first key) per query block: query i
  sees keys j <= i, and j > i - window with a window."""
  size = max(MIN_QUERY_BLOCK, -(-s // MAX_QUERY_BLOCKS))
  return [(a, min(s, a + size), max(0, a - window + 1) if window else 0) for a in range(0, s, size)]


def attend(q, k, v, mask, scale: float, softcap: float, sinks):
  """Softmax attention of one query block over its keys -> (out [b, q, h, v], max
  logits [h]); mask [b, 1, 1, q, t]."""
  b, s, h, d = q.shape
  kv_heads = k.shape[2]
  if kv_heads == h:  # MHA: no singleton group axis (XLA:CPU runs the 4-D form faster)
    logits = jnp.einsum("bqhd,bthd->bhqt", q, k, preferred_element_type=jnp.float32) * scale
    mask = mask[:, 0]
  else:
    q = q.reshape(b, s, kv_heads, h // kv_heads, d)
    logits = jnp.einsum("bqkgd,btkd->bkgqt", q, k, preferred_element_type=jnp.float32) * scale
  masked = jnp.where(mask, jax.lax.stop_gradient(logits), -jnp.inf)
  max_logits = jnp.max(masked, axis=(0, -2, -1)).reshape(h)
  if softcap > 0:
    logits = softcap * jnp.tanh(logits / softcap)
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  if sinks is None:
    probs = jax.nn.softmax(logits, axis=-1)
  else:
    # The sink is an extra logit per head that takes probability mass but has no value.
    sink = sinks.astype(jnp.float32).reshape((1,) + logits.shape[1:-2] + (1, 1))
    sink = jnp.broadcast_to(sink, logits.shape[:-1] + (1,))
    probs = jax.nn.softmax(jnp.concatenate([logits, sink], axis=-1), axis=-1)[..., :-1]
  probs = probs.astype(v.dtype)
  if kv_heads == h:
    return jnp.einsum("bhqt,bthv->bqhv", probs, v), max_logits
  out = jnp.einsum("bkgqt,btkv->bqkgv", probs, v)
  return out.reshape(b, s, h, v.shape[-1]), max_logits


def fused_attention(q, k, v, *, segment_ids, scale: float, window: int = 0, implementation="cudnn"):
  """Causal GQA through `jax.nn.dot_product_attention` (cuDNN's fused kernel on a
  GPU): packed documents as a boolean mask [b, 1, q, t], a window as its left size."""
  same_doc = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
  return jax.nn.dot_product_attention(
    q, k, v, mask=same_doc, scale=scale, is_causal=True,
    local_window_size=(window - 1, 0) if window else None, implementation=implementation,
  )  # fmt: skip


class Attention(nnx.Module):
  def __init__(self, cfg: AttentionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.cfg = cfg
    e, h, k, d, std = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.init_std
    # With a gate, each head's q_proj columns are [query | gate] (Qwen3-Next's layout).
    q_width = 2 * d if cfg.gate else d
    self.q_proj = params.normal(
      rngs, (e, h, q_width), ("embed", "heads", "head_dim"), std, param_dtype
    )
    own_kv = cfg.kv_share != "reuse"  # a reusing layer has no K/V weights
    if own_kv:
      self.k_proj = params.normal(
        rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), std, param_dtype
      )
      self.v_proj = params.normal(
        rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), std, param_dtype
      )
    self.o_proj = params.normal(rngs, (h, d, e), ("heads", "head_dim", "embed"), std, param_dtype)
    if cfg.qkv_bias:
      self.q_bias = params.constant(0.0, (h, d), ("heads", "head_dim"), param_dtype)
    if cfg.qkv_bias and own_kv:
      self.k_bias = params.constant(0.0, (k, d), ("kv_heads", "head_dim"), param_dtype)
      self.v_bias = params.constant(0.0, (k, d), ("kv_heads", "head_dim"), param_dtype)
    if cfg.out_bias:
      self.o_bias = params.constant(0.0, (e,), ("embed",), param_dtype)
    if cfg.qk_norm == "head":
      self.q_norm = RMSNorm(d, cfg.norm, param_dtype=param_dtype, axis_name="head_dim")
    elif cfg.qk_norm == "full":
      self.q_norm = RMSNorm(h * d, cfg.norm, param_dtype=param_dtype, axis_name="heads")
    if cfg.qk_norm == "head" and own_kv:
      self.k_norm = RMSNorm(d, cfg.norm, param_dtype=param_dtype, axis_name="head_dim")
    elif cfg.qk_norm == "full" and own_kv:
      self.k_norm = RMSNorm(k * d, cfg.norm, param_dtype=param_dtype, axis_name="kv_heads")
    if cfg.sinks:
      self.sinks = params.constant(0.0, (h,), ("heads",), param_dtype)

  def _norm(self, name, x):  # x: [b, s, heads, d]
    if self.cfg.qk_norm == "l2":  # RMS over head_dim without a scale (Llama 4).
      x32 = x.astype(jnp.float32)
      rms = jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.norm.eps)
      return (x32 / rms).astype(x.dtype)
    norm = getattr(self, name)
    if self.cfg.qk_norm == "full":
      return norm(x.reshape(x.shape[:2] + (-1,))).reshape(x.shape)
    return norm(x)

  def _temperature(self, q, positions):
    """Llama 4's NoPE layers sharpen attention with length: q *= 1 + s*ln(1 + floor((p+1)/f))."""
    cfg = self.cfg
    p = positions.astype(jnp.float32)
    t = 1.0 + cfg.temperature_scale * jnp.log1p(jnp.floor((p + 1.0) / cfg.temperature_floor))
    return (q.astype(jnp.float32) * t[:, :, None, None]).astype(q.dtype)

  def __call__(self, x, ctx):
    """x: [b, s, e] -> (out [b, s, e], stats): `max_logits` [h], the largest
    pre-softmax logit per head; with kv_share "store", `shared` {key: (k, v)} that
    later layers find in ctx.shared (kv_share "reuse": no K/V of its own).
    Generation: a prefill (ctx.cache_len) also returns the layer's `cache`
    (modeling/attention/cache.py); a decode step (ctx.decode) attends from the new
    positions to ctx.cache after writing them into it, and returns it."""
    cfg, dt = self.cfg, x.dtype
    positions, segment_ids = ctx.positions, ctx.segment_ids
    q = project(x, self.q_proj[...], cfg.fp8)  # [b, s, h, d] (or [b, s, h, 2d]: query | gate)
    if cfg.gate:
      q, gate = jnp.split(q, 2, axis=-1)
    if cfg.qkv_bias:
      q = q + self.q_bias[...].astype(dt)
    if cfg.qk_norm != "none":
      q = self._norm("q_norm", q)
    if cfg.rope is not None:
      q = rope.apply(q, positions, cfg.rope)
    if cfg.temperature_scale > 0:
      q = self._temperature(q, positions)
    sinks = self.sinks[...] if cfg.sinks else None
    stats = {}
    if ctx.decode:
      out, max_logits, stats = self._decode(x, q, ctx, sinks)
    else:
      k, v = ctx.shared[self.kv_key] if cfg.kv_share == "reuse" else self._kv(x, positions)
      out, max_logits = dot_product_attention(
        q,
        k,
        v,
        segment_ids=segment_ids,
        scale=cfg.scale,
        window=cfg.window,
        chunk=cfg.chunk,
        positions=positions,
        softcap=cfg.softcap,
        sinks=sinks,
        kernel=cfg.kernel,
      )
      if cfg.kv_share == "store":
        stats["shared"] = {self.kv_key: (k, v)}
      if ctx.cache_len > 0 and cfg.kv_share != "reuse":  # a prefill: this layer's cache
        size = kv_cache.slots(cfg.window, cfg.chunk, ctx.cache_len)
        stats["cache"] = kv_cache.constrain(kv_cache.fill({"k": k, "v": v}, segment_ids, size))
    if cfg.gate:
      out = out * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(out.dtype)
    out = project(out, self.o_proj[...], cfg.fp8, n_in=2)  # [b, s, e]
    if cfg.out_bias:
      out = out + self.o_bias[...].astype(dt)
    if max_logits is not None:
      stats["max_logits"] = max_logits
    return out, stats

  def _decode(self, x, q, ctx, sinks):
    """New positions [b, q] against the cache: this layer's own, updated with the
    new keys and values first, or (kv_share "reuse") the storing layer's, left by
    it in ctx.shared. -> (out [b, q, h, v], max_logits, stats)."""
    cfg, stats = self.cfg, {}
    if cfg.kv_share == "reuse":
      cache = ctx.shared[self.kv_key]
    else:
      k, v = self._kv(x, ctx.positions)
      cache = kv_cache.append(ctx.cache, {"k": k, "v": v}, ctx.positions)
      stats["cache"] = kv_cache.constrain(cache)
    if cfg.kv_share == "store":
      stats["shared"] = {self.kv_key: cache}
    mask = kv_cache.mask(cache, ctx.positions, cfg.window, cfg.chunk)
    k, v = cache["k"].astype(q.dtype), cache["v"].astype(q.dtype)
    out, max_logits = attend(q, k, v, mask, cfg.scale, cfg.softcap, sinks)
    return out, max_logits, stats

  @property
  def kv_key(self) -> tuple:
    """Which layers may share K/V: those that mask alike (window, chunk)."""
    return ("kv", self.cfg.window, self.cfg.chunk)

  def _kv(self, x, positions):
    """Keys (biased, normed, rotated) and values (biased, normed) [b, s, kv, d]."""
    cfg, dt = self.cfg, x.dtype
    k = project(x, self.k_proj[...], cfg.fp8)  # [b, s, kv, d]
    v = project(x, self.v_proj[...], cfg.fp8)
    if cfg.qkv_bias:
      k = k + self.k_bias[...].astype(dt)
      v = v + self.v_bias[...].astype(dt)
    if cfg.qk_norm != "none":
      k = self._norm("k_norm", k)
    if cfg.v_norm:  # RMS over head_dim without a scale (Gemma 3n)
      v32 = v.astype(jnp.float32)
      v = (v32 * jax.lax.rsqrt(jnp.mean(v32 * v32, -1, keepdims=True) + cfg.norm.eps)).astype(dt)
    if cfg.rope is not None:
      k = rope.apply(k, positions, cfg.rope)
    return k, v
