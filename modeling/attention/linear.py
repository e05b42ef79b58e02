"""Linear attention with the gated delta rule: the recurrence of gated DeltaNet
(Qwen3-Next) and of Kimi Delta Attention (per-channel decay), in two forms.

Per head, a state S [dk, dv] is decayed, corrected toward the new value, and read:

  S_t = diag(a_t) S_{t-1} (I - b_t k_t k_t^T)... written as the delta rule:
  S <- exp(g_t) * S;   S <- S + b_t k_t (v_t - S^T k_t)^T;   o_t = S^T q_t

with g_t <= 0 the log decay: one per head (gated DeltaNet, g [b, s, h]) or one
per key channel (KDA, g [b, s, h, dk], scaling the rows of S), and b_t in (0, 1)
the write strength. `recurrent` runs it step by step (the reference, and the
decode path); `chunked` is the parallel training form: inside a chunk of C
tokens the delta rule's coupling is a unit lower-triangular system, inverted
once by merging diagonal blocks (the WY form); only the state crosses chunks.

Packed documents (segment_ids): the state starts from zero at each document;
no token reads or writes across a document boundary. All math in float32.

Letters: b batch, s positions, h heads, k key dim, v value dim, c chunk
positions (i, j inside a chunk).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.layers import params
from modeling.layers.norms import NormConfig, RMSNorm
from pallas_kernels.chunked_delta import ops as delta_ops
from parallelism import context

KINDS = ("gated_deltanet", "kda", "lightning")


@dataclasses.dataclass(frozen=True)
class DeltaNetConfig:
  """A linear-attention layer: gated DeltaNet (Qwen3-Next, a decay per head, key
  heads shared by groups of value heads) or Kimi Delta Attention (Kimi Linear, a
  decay per key channel; q, k and v heads and dims equal), both the gated delta
  rule here; or MiniMax-01's lightning attention (modeling/attention/lightning.py:
  a fixed decay per head that shrinks with depth; heads and dims equal, no conv)."""

  embed_dim: int
  num_k_heads: int  # query/key heads; each serves num_v_heads / num_k_heads value heads.
  num_v_heads: int
  k_head_dim: int
  v_head_dim: int
  conv_kernel: int = 4  # causal depthwise conv over q, k, v.
  chunk: int = 64  # chunk length of the parallel form.
  norm_eps: float = 1e-6
  init_std: float = 0.02
  kind: str = "gated_deltanet"  # a KINDS entry
  kernel: str = "xla"  # state pass: xla | pallas | pallas_interpret (kernels.py decides).
  num_layers: int = 1  # the model's depth: lightning's decay rates depend on layer / depth.


def _starts(segment_ids):
  """[b, s] bool: a token that starts a new document (not the first token)."""
  return jnp.pad(segment_ids[:, 1:] != segment_ids[:, :-1], ((0, 0), (1, 0)))


def recurrent(q, k, v, g, beta, *, segment_ids=None, initial_state=None):
  """q, k: [b, s, h, k]; v: [b, s, h, v]; g: [b, s, h] or [b, s, h, k] (log decay);
  beta: [b, s, h]. Returns (o [b, s, h, v], final state [b, h, k, v]), float32."""
  f32 = jnp.float32
  b, s, h, dk = q.shape
  dv = v.shape[-1]
  state = jnp.zeros((b, h, dk, dv), f32) if initial_state is None else initial_state.astype(f32)
  starts = jnp.zeros((b, s), bool) if segment_ids is None else _starts(segment_ids)
  per_channel = g.ndim == 4

  def step(state, xs):
    q_t, k_t, v_t, g_t, b_t, start = xs  # [b, h, k], .., [b, h] or [b, h, k], [b, h], [b]
    state = jnp.where(start[:, None, None, None], 0.0, state)
    decay = jnp.exp(g_t)[..., None] if per_channel else jnp.exp(g_t)[..., None, None]
    state = state * decay
    error = v_t - jnp.einsum("bhk,bhkv->bhv", k_t, state)  # v - S^T k
    state = state + jnp.einsum("bhk,bhv->bhkv", k_t, b_t[..., None] * error)
    return state, jnp.einsum("bhk,bhkv->bhv", q_t, state)

  time_major = lambda x: jnp.moveaxis(x.astype(f32), 1, 0)
  xs = tuple(map(time_major, (q, k, v, g, beta))) + (jnp.moveaxis(starts, 1, 0),)
  state, o = jax.lax.scan(step, state, xs)
  return jnp.moveaxis(o, 0, 1), state


def _unit_lower_inverse(a):
  """(I - a)^-1 for strictly lower-triangular a [..., c, c], built from the diagonal
  blocks up: [[A, 0], [-a21, B]]^-1 = [[A^-1, 0], [B^-1 a21 A^-1, B^-1]], log2(c)
  rounds of batched matmuls. (XLA's CPU triangular solve hung inside the chunk scan.)"""
  c = a.shape[-1]
  size = 1 << (c - 1).bit_length()  # pad to a power of two: zero rows decouple
  a = jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, size - c)] * 2)
  inverse, half = jnp.ones(a.shape[:-2] + (size, 1, 1), a.dtype), 1
  while half < size:
    n = size // (2 * half)
    blocks = a.reshape(a.shape[:-2] + (n, 2, half, n, 2, half))
    a21 = jnp.moveaxis(jnp.diagonal(blocks, axis1=-6, axis2=-3), -1, -5)[..., 1, :, 0, :]
    pairs = inverse.reshape(inverse.shape[:-3] + (n, 2, half, half))
    top_left, bottom_right = pairs[..., 0, :, :], pairs[..., 1, :, :]
    bottom_left = bottom_right @ a21 @ top_left
    zeros = jnp.zeros_like(top_left)
    inverse = jnp.concatenate(
      [
        jnp.concatenate([top_left, zeros], axis=-1),
        jnp.concatenate([bottom_left, bottom_right], axis=-1),
      ],
      axis=-2,
    )
    half *= 2
  return inverse[..., 0, :c, :c]


def _chunk_terms(q, k, v, G, beta, seg, state_seg, per_channel: bool):
  """The terms of one chunk for every (batch, head), independent of the state:
  q, k [b, h, c, k], v [b, h, c, v], G (cumulative log decay) [b, h, c(, k)],
  beta [b, h, c], segment ids [b, c], the segment of the state entering the chunk
  [b]. Returns (qd, w, u, kd [b, h, c, .], P [b, h, c, c], a [b, h, k]) of
  `pallas_kernels.chunked_delta.reference.state_pass`."""
  c, dk = q.shape[2], q.shape[3]
  same = seg[:, :, None] == seg[:, None, :]  # [b, i, j]
  lower = jnp.tril(jnp.ones((c, c), bool))
  visible = (same & lower)[:, None]  # j <= i, same document: [b, 1, i, j]
  strict = visible & ~jnp.eye(c, dtype=bool)
  if per_channel:  # relative decays per channel, masked before exp so nothing overflows
    rel = jnp.where(visible[..., None], G[:, :, :, None, :] - G[:, :, None, :, :], -jnp.inf)
    rel = jnp.exp(rel)  # [b, h, i, j, k]
    kk = jnp.einsum("bhik,bhjk,bhijk->bhij", k, k, rel)
    qk = jnp.einsum("bhik,bhjk,bhijk->bhij", q, k, rel)
    decay_in, decay_out = jnp.exp(G), jnp.exp(G[:, :, -1:] - G)  # [b, h, c, k]
    decay_all = jnp.exp(G[:, :, -1])  # [b, h, k]
  else:
    rel = jnp.exp(jnp.where(visible, G[..., :, None] - G[..., None, :], -jnp.inf))
    kk = jnp.einsum("bhik,bhjk->bhij", k, k) * rel
    qk = jnp.einsum("bhik,bhjk->bhij", q, k) * rel
    decay_in, decay_out = jnp.exp(G)[..., None], jnp.exp(G[:, :, -1:] - G)[..., None]
    decay_all = jnp.broadcast_to(jnp.exp(G[:, :, -1:]), G.shape[:2] + (dk,))
  # (I - A)^-1 with A_ij = -beta_i (k_i . k_j) decay_ij below the diagonal (nilpotent).
  inverse = _unit_lower_inverse(-jnp.where(strict, beta[..., None] * kk, 0.0))
  solve = lambda rhs: jnp.einsum("bhij,bhjx->bhix", inverse, rhs)
  u = solve(beta[..., None] * v)  # [b, h, c, v]
  w = solve(beta[..., None] * k * decay_in)  # [b, h, c, k]
  reads = (seg == state_seg[:, None])[:, None, :, None]  # tokens continuing the state's document
  writes = (seg == seg[:, -1:])[:, None, :, None]  # tokens of the document the chunk ends in
  kept = (seg[:, -1] == state_seg)[:, None, None]  # the state survives the chunk
  return (
    jnp.where(reads, q * decay_in, 0.0),
    jnp.where(reads, w, 0.0),
    u,
    jnp.where(writes, k * decay_out, 0.0),
    jnp.where(visible, qk, 0.0),
    jnp.where(kept, decay_all, 0.0),
  )


# kernel -> (state_pass implementation, interpret): the XLA loop or the Pallas kernels.
STATE_PASS = {"xla": ("reference", False), "pallas": ("pallas", False),
              "pallas_interpret": ("pallas", True)}  # fmt: skip


def chunked(
  q, k, v, g, beta, *, chunk: int = 64, segment_ids=None, initial_state=None, unroll=False,
  kernel: str = "xla",
):  # fmt: skip
  """Same contract as `recurrent`; lengths need not be a multiple of `chunk`.
  The chunk-local terms are built for all chunks at once; only the state pass
  runs in order: the XLA loop (kernel "xla") or the Pallas kernels ("pallas",
  "pallas_interpret" on CPU). unroll: unroll the XLA loop over chunks (XLA's
  cost analysis counts a loop body once)."""
  f32 = jnp.float32
  b, s, h, dk = q.shape
  dv = v.shape[-1]
  per_channel = g.ndim == 4
  seg = jnp.ones((b, s), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
  pad = -s % chunk
  # Padding continues the last document and changes nothing: k = v = beta = g = 0.
  pad_t = lambda x: jnp.pad(x.astype(f32), [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  q, k, v, g, beta = map(pad_t, (q, k, v, g, beta))
  seg = jnp.pad(seg, ((0, 0), (0, pad)), mode="edge")
  n = (s + pad) // chunk

  def chunks(x):  # [b, s, h, ...] -> [n, b, h, c, ...]
    x = jnp.moveaxis(x, 2, 1).reshape(b, h, n, chunk, *x.shape[3:])
    return jnp.moveaxis(x, 2, 0)

  seg_chunks = jnp.moveaxis(seg.reshape(b, n, chunk), 1, 0)  # [n, b, c]
  state_segs = jnp.concatenate([seg[None, :, 0], seg_chunks[:-1, :, -1]])  # [n, b]
  G = jnp.cumsum(chunks(g), axis=3)  # cumulative log decay inside each chunk
  terms = jax.vmap(lambda *xs: _chunk_terms(*xs, per_channel=per_channel))(
    chunks(q), chunks(k), chunks(v), G, chunks(beta), seg_chunks, state_segs
  )
  terms = [jnp.moveaxis(t, 0, 2) for t in terms]  # [b, h, n, ...]
  state = jnp.zeros((b, h, dk, dv), f32) if initial_state is None else initial_state.astype(f32)
  implementation, interpret = STATE_PASS[kernel]
  state_pass = functools.partial(
    delta_ops.state_pass, implementation=implementation, interpret=interpret, unroll=unroll
  )
  if context.splits_chunks(s + pad, chunk):  # the chunks split over devices: pass the state
    o, state = context.linear_state_pass(state_pass, terms, state)
  else:
    o, state = state_pass(*terms, state)
  o = o.reshape(b, h, n * chunk, dv)[:, :, :s]  # [b, h, s, v]
  return jnp.moveaxis(o, 1, 2), state


def causal_conv(x, weight, segment_ids):
  """Depthwise causal conv over time: x [b, s, ...ch], weight [kernel, ...ch]; taps
  never reach into an earlier document. out_t = sum_i weight[i] x_{t - (K-1) + i}."""
  kernel, s = weight.shape[0], x.shape[1]
  pad = [(0, 0), (kernel - 1, 0)] + [(0, 0)] * (x.ndim - 2)
  xp, segp = jnp.pad(x, pad), jnp.pad(segment_ids, ((0, 0), (kernel - 1, 0)), constant_values=-1)
  out = jnp.zeros(x.shape, jnp.float32)
  for i in range(kernel):
    same = (segp[:, i : i + s] == segment_ids)[(...,) + (None,) * (x.ndim - 2)]
    out = out + jnp.where(same, xp[:, i : i + s], 0.0) * weight[i].astype(jnp.float32)
  return out


def conv_cached(x, weight, ctx):
  """`causal_conv` as a layer runs it under generation -> (out [b, s, ...ch], what the
  cache keeps of its input: the last kernel - 1 rows [b, kernel - 1, ...ch], or
  None outside generation). A decode step convolves its new rows with the cached
  ones; a prefill keeps each prompt's last rows (zeros before its start)."""
  kernel = weight.shape[0]
  if ctx.decode:
    window = jnp.concatenate([ctx.cache["conv"].astype(x.dtype), x], axis=1)
    s = x.shape[1]
    out = sum(window[:, i : i + s].astype(jnp.float32) * weight[i].astype(jnp.float32)
              for i in range(kernel))  # fmt: skip
    return out, window[:, s:]
  out = causal_conv(x, weight, ctx.segment_ids)
  if not ctx.cache_len:
    return out, None
  lengths = jnp.sum(ctx.segment_ids > 0, axis=1)
  rows = lengths[:, None] - (kernel - 1) + jnp.arange(kernel - 1)  # [b, kernel - 1]
  tail = jnp.take_along_axis(x, jnp.maximum(rows, 0)[..., None], axis=1)
  return out, jnp.where(rows[..., None] >= 0, tail, 0)


def delta_cached(q, k, v, g, beta, ctx, cfg: DeltaNetConfig):
  """The delta rule as a layer runs it -> (o, the final state [b, h, k, v] under
  generation, else None). A decode step runs `recurrent` from the cached state; a
  prefill runs `chunked` with each prompt's padding made inert (k, g, beta zero: no
  write, no decay), so its final state is the state after the prompt's last token."""
  if ctx.decode:
    return recurrent(q, k, v, g, beta, initial_state=ctx.cache["state"])
  if not ctx.cache_len:
    run = chunked(q, k, v, g, beta, chunk=cfg.chunk, segment_ids=ctx.segment_ids,
                  kernel=cfg.kernel)  # fmt: skip
    return run[0], None
  real = ctx.segment_ids > 0
  inert = lambda t: jnp.where(real.reshape(real.shape + (1,) * (t.ndim - 2)), t, 0.0)
  return chunked(
    q, inert(k), v, inert(g), inert(beta), chunk=cfg.chunk,
    segment_ids=jnp.ones_like(ctx.segment_ids), kernel=cfg.kernel,
  )  # fmt: skip


def l2_normalize(x, eps: float = 1e-6):
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class GatedDeltaNet(nnx.Module):
  """Gated DeltaNet layer (Qwen3-Next): projections, short causal conv + SiLU on
  q/k/v, L2-normalised q/k (q also / sqrt(dk)), write strength beta = sigmoid(b),
  log decay g = -exp(A_log) softplus(a + dt_bias) per head, the delta rule, then
  a per-head RMSNorm gated by SiLU(z) and the output projection.

  Params keep the checkpoint's fused layout: `in_proj_qkvz` [e, hk, (q, k, v, z)]
  and `in_proj_ba` [e, hk, (b, a)] grouped per key head, whose r = hv / hk value
  heads follow it (value head n reads key head n // r); `conv` [kernel, channels]
  over the concatenated [q, k, v] channels.
  """

  def __init__(self, cfg: DeltaNetConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.cfg = cfg
    e, hk, hv, dk, dv = (
      cfg.embed_dim,
      cfg.num_k_heads,
      cfg.num_v_heads,
      cfg.k_head_dim,
      cfg.v_head_dim,
    )
    r, std = hv // hk, cfg.init_std
    normal = lambda shape, axes: params.normal(rngs, shape, axes, std, param_dtype)
    self.in_proj_qkvz = normal((e, hk, 2 * dk + 2 * r * dv), ("embed", "kv_heads", None))
    self.in_proj_ba = normal((e, hk, 2 * r), ("embed", "kv_heads", None))
    self.conv = normal((cfg.conv_kernel, 2 * hk * dk + hv * dv), (None, None))
    # A = exp(A_log) ~ U(1, 16) and dt_bias = 1 at init (Qwen3-Next).
    a_init = jnp.log(jax.random.uniform(rngs.params(), (hv,), jnp.float32, 1.0, 16.0))
    self.A_log = nnx.Param(a_init.astype(param_dtype), axes=("heads",))
    self.dt_bias = params.constant(1.0, (hv,), ("heads",), param_dtype)
    self.norm = RMSNorm(
      dv, NormConfig("rms", cfg.norm_eps), param_dtype=param_dtype, axis_name="head_dim"
    )
    self.out_proj = normal((hv, dv, e), ("heads", "head_dim", "embed"))

  def __call__(self, x, ctx):
    """x: [b, s, e] -> (out [b, s, e], stats): no softmax, so no max logits; under
    generation the `cache` {state, conv}. Reads ctx.segment_ids (the recurrence
    orders tokens itself)."""
    cfg, f32 = self.cfg, jnp.float32
    b, s, _ = x.shape
    hk, hv, dk, dv = cfg.num_k_heads, cfg.num_v_heads, cfg.k_head_dim, cfg.v_head_dim
    r = hv // hk
    proj = lambda w: jnp.einsum("bse,ehx->bshx", x, w[...].astype(x.dtype)).astype(f32)
    q, k, v, z = jnp.split(proj(self.in_proj_qkvz), [dk, 2 * dk, 2 * dk + r * dv], axis=-1)
    beta, a = jnp.split(proj(self.in_proj_ba), [r], axis=-1)  # [b, s, hk, r] each
    mixed = jnp.concatenate([q.reshape(b, s, -1), k.reshape(b, s, -1), v.reshape(b, s, -1)], -1)
    mixed, conv_tail = conv_cached(mixed, self.conv[...], ctx)
    mixed = jax.nn.silu(mixed)
    q, k, v = jnp.split(mixed, [hk * dk, 2 * hk * dk], axis=-1)
    q = l2_normalize(q.reshape(b, s, hk, dk)) * dk**-0.5
    k = l2_normalize(k.reshape(b, s, hk, dk))
    q, k = jnp.repeat(q, r, axis=2), jnp.repeat(k, r, axis=2)  # [b, s, hv, dk]
    beta = jax.nn.sigmoid(beta.reshape(b, s, hv))
    a = a.reshape(b, s, hv) + self.dt_bias[...].astype(f32)
    g = -jnp.exp(self.A_log[...].astype(f32)) * jax.nn.softplus(a)
    o, state = delta_cached(q, k, v.reshape(b, s, hv, dv), g, beta, ctx, cfg)
    o = self.norm(o) * jax.nn.silu(z.reshape(b, s, hv, dv))  # [b, s, hv, dv]
    out = jnp.einsum("bshv,hve->bse", o.astype(x.dtype), self.out_proj[...].astype(x.dtype))
    return out, {} if state is None else {"cache": {"state": state, "conv": conv_tail}}


class KimiDeltaAttention(nnx.Module):
  """Kimi Delta Attention layer (Kimi Linear): gated DeltaNet with a decay per key
  channel. q/k/v projections (h heads of d), short causal conv + SiLU on each,
  L2-normalised q/k (q also / sqrt(d)), write strength beta = sigmoid(x W_b), log
  decay g = -exp(A_log[h]) softplus(x W_fa W_fb + dt_bias) per (head, channel), the
  delta rule, then a per-head RMSNorm gated by sigmoid(x W_ga W_gb) and o_proj.
  The decay and output gates are low rank (embed -> d -> h * d)."""

  def __init__(self, cfg: DeltaNetConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.cfg = cfg
    e, h, d, std = cfg.embed_dim, cfg.num_v_heads, cfg.v_head_dim, cfg.init_std
    normal = lambda shape, axes: params.normal(rngs, shape, axes, std, param_dtype)
    self.q_proj = normal((e, h, d), ("embed", "heads", "head_dim"))
    self.k_proj = normal((e, h, d), ("embed", "heads", "head_dim"))
    self.v_proj = normal((e, h, d), ("embed", "heads", "head_dim"))
    # Short causal convs [kernel, h * d], one each for q, k and v (Kimi Linear's layout).
    self.q_conv = normal((cfg.conv_kernel, h * d), (None, None))
    self.k_conv = normal((cfg.conv_kernel, h * d), (None, None))
    self.v_conv = normal((cfg.conv_kernel, h * d), (None, None))
    self.f_a_proj = normal((e, d), ("embed", None))
    self.f_b_proj = normal((d, h, d), (None, "heads", "head_dim"))
    self.b_proj = normal((e, h), ("embed", "heads"))
    self.g_a_proj = normal((e, d), ("embed", None))
    self.g_b_proj = normal((d, h, d), (None, "heads", "head_dim"))
    # Init as FLA / Kimi Linear: A = exp(A_log) ~ U(1, 16) per head; dt_bias the
    # inverse softplus of dt ~ exp(U(ln 1e-3, ln 1e-1)) per channel.
    a_key, dt_key = jax.random.split(rngs.params())
    a_init = jnp.log(jax.random.uniform(a_key, (h,), jnp.float32, 1.0, 16.0))
    dt = jnp.exp(jax.random.uniform(dt_key, (h, d), jnp.float32, jnp.log(1e-3), jnp.log(1e-1)))
    self.A_log = nnx.Param(a_init.astype(param_dtype), axes=("heads",))
    self.dt_bias = nnx.Param(
      (dt + jnp.log(-jnp.expm1(-dt))).astype(param_dtype), axes=("heads", "head_dim")
    )
    self.norm = RMSNorm(
      d, NormConfig("rms", cfg.norm_eps), param_dtype=param_dtype, axis_name="head_dim"
    )
    self.o_proj = normal((h, d, e), ("heads", "head_dim", "embed"))

  def __call__(self, x, ctx):
    """x: [b, s, e] -> (out [b, s, e], stats): no softmax, so no max logits; under
    generation the `cache` {state, conv}. Reads ctx.segment_ids (the recurrence
    orders tokens itself)."""
    cfg, f32, dt = self.cfg, jnp.float32, x.dtype
    b, s, _ = x.shape
    h, d = cfg.num_v_heads, cfg.v_head_dim
    heads = lambda w: jnp.einsum("bse,ehd->bshd", x, w[...].astype(dt)).reshape(b, s, h * d)
    low_rank = lambda a, w: jnp.einsum("bsr,rhd->bshd", x @ a[...].astype(dt), w[...].astype(dt))
    mixed = jnp.concatenate([heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)], -1)
    conv = jnp.concatenate([self.q_conv[...], self.k_conv[...], self.v_conv[...]], axis=-1)
    mixed, conv_tail = conv_cached(mixed, conv, ctx)
    mixed = jax.nn.silu(mixed)
    q, k, v = (t.reshape(b, s, h, d) for t in jnp.split(mixed, 3, axis=-1))
    q, k = l2_normalize(q) * d**-0.5, l2_normalize(k)
    beta = jax.nn.sigmoid((x @ self.b_proj[...].astype(dt)).astype(f32))  # [b, s, h]
    a = low_rank(self.f_a_proj, self.f_b_proj).astype(f32) + self.dt_bias[...].astype(f32)
    g = -jnp.exp(self.A_log[...].astype(f32))[:, None] * jax.nn.softplus(a)  # [b, s, h, d]
    o, state = delta_cached(q, k, v, g, beta, ctx, cfg)
    gate = jax.nn.sigmoid(low_rank(self.g_a_proj, self.g_b_proj).astype(f32))
    o = self.norm(o) * gate  # [b, s, h, d]
    out = jnp.einsum("bshd,hde->bse", o.astype(dt), self.o_proj[...].astype(dt))
    return out, {} if state is None else {"cache": {"state": state, "conv": conv_tail}}


# model.linear.kind -> the layer it builds.
