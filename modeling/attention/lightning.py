"""Lightning attention (MiniMax-01): linear attention with a fixed decay per head.

  o_t = sum_{s <= t} exp(-r_h (t - s)) (q_t . k_s) v_s

No softmax, no normaliser, no 1/sqrt(d): q, k, v are SiLU'd projections and the
sum is RMS-normalised over all heads afterwards. The rates are ALiBi's slopes,
r_h = 2^(-8 (h + 1) / H) for head h of H, times (1 - l / (L - 1)) in layer l of
L: deep layers forget slowly, the last one barely at all.

`reference` is the quadratic masked form. `chunked` is the training form, exact
and linear in the sequence: inside a chunk of C tokens the decayed products are
one masked [C, C] matmul; across chunks a state S [d, d] per head carries
sum_s exp(-r (end - s)) k_s v_s^T, decayed by exp(-r C) per chunk.

Packed documents (segment_ids): no token reads across a document boundary; a
query reads the carried state only if it continues the document that was open
when its chunk began. All math in float32.

Letters: b batch, s/t positions, h heads, d key dim, v value dim, i/j positions
inside a chunk.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.attention.linear import DeltaNetConfig
from modeling.layers import params
from modeling.layers.norms import NormConfig, RMSNorm


def decay_rates(num_heads: int, layer, num_layers: int):
  """[h] float32 rates r_h of `layer` (an int, or traced inside the layer scan)."""
  slopes = 2.0 ** (-8.0 * jnp.arange(1, num_heads + 1, dtype=jnp.float32) / num_heads)
  # MiniMax's depth factor, epsilons included: the last layer keeps 1e-5 of its rate.
  return slopes * (1.0 - layer / (num_layers - 1 + 1e-5) + 1e-5)


def reference(q, k, v, rates, *, segment_ids):
  """q, k: [b, s, h, d], v: [b, s, h, v], rates [h] -> o [b, s, h, v], quadratic."""
  f32 = jnp.float32
  pos = jnp.arange(q.shape[1])
  dist = pos[:, None] - pos[None, :]  # [s, t]
  decay = jnp.where(dist >= 0, jnp.exp(-rates[:, None, None] * jnp.maximum(dist, 0)), 0.0)
  same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [b, s, t]
  scores = jnp.einsum("bshd,bthd->bhst", q.astype(f32), k.astype(f32))
  scores = scores * decay[None] * same[:, None]
  return jnp.einsum("bhst,bthv->bshv", scores, v.astype(f32))


def chunked(q, k, v, rates, *, chunk: int, segment_ids):
  """Same as `reference`, carrying a [d, v] state per head across chunks."""
  f32 = jnp.float32
  b, s, h, _ = q.shape
  pad = -s % chunk  # padded tokens come last: a new document no real token reads
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=-1)
  n = (s + pad) // chunk

  def chunks(x):  # [b, s, h, x] -> [n, b, h, c, x]
    return jnp.moveaxis(x.astype(f32).reshape(b, n, chunk, h, -1), (1, 3), (0, 2))

  seg = jnp.moveaxis(segment_ids.reshape(b, n, chunk), 1, 0)  # [n, b, c]
  i = jnp.arange(chunk)
  dist = i[:, None] - i[None, :]
  r = rates[:, None]  # [h, 1]
  intra = jnp.where(dist >= 0, jnp.exp(-r[..., None] * jnp.maximum(dist, 0)), 0.0)  # [h, i, j]
  q_decay = jnp.exp(-r * (i + 1))[..., None]  # [h, i, 1]: from the chunk's start
  k_decay = jnp.exp(-r * (chunk - 1 - i))[..., None]  # [h, j, 1]: to the chunk's end
  chunk_decay = jnp.exp(-rates * chunk)[:, None, None]  # [h, 1, 1]

  def step(carry, xs):
    state, open_seg = carry  # [b, h, d, v], [b]: the document the state belongs to
    qc, kc, vc, sc = xs  # [b, h, c, d], [b, h, c, d], [b, h, c, v], [b, c]
    same = (sc[:, :, None] == sc[:, None, :])[:, None]  # [b, 1, i, j]
    scores = jnp.einsum("bhid,bhjd->bhij", qc, kc) * intra * same
    o = jnp.einsum("bhij,bhjv->bhiv", scores, vc)
    reads = (sc == open_seg[:, None])[:, None, :, None]  # [b, 1, i, 1]
    o = o + reads * q_decay * jnp.einsum("bhid,bhdv->bhiv", qc, state)
    last = sc[:, -1]
    writes = (sc == last[:, None])[:, None, :, None]  # the keys of the chunk's last document
    new = jnp.einsum("bhjd,bhjv->bhdv", kc * k_decay * writes, vc)
    keep = (last == open_seg)[:, None, None, None]
    return (jnp.where(keep, state * chunk_decay, 0.0) + new, last), o

  dv = v.shape[-1]
  init = (jnp.zeros((b, h, q.shape[-1], dv), f32), jnp.full((b,), -1, segment_ids.dtype))
  _, o = jax.lax.scan(step, init, (chunks(q), chunks(k), chunks(v), seg))  # [n, b, h, c, v]
  return jnp.moveaxis(o, (0, 2), (1, 3)).reshape(b, n * chunk, h, dv)[:, :s]


def prompt_state(k, v, rates, segment_ids):
  """The state [b, h, d, v] after each row's last real token (right-padded prompts
  of one document each): sum over its tokens t of exp(-r (last - t)) k_t v_t^T."""
  t = jnp.arange(k.shape[1])
  last = jnp.sum(segment_ids > 0, axis=1)[:, None, None] - 1  # [b, 1, 1]
  age = (last - t[None, None]).astype(jnp.float32)  # [b, 1, s]
  w = jnp.where(age >= 0, jnp.exp(-rates[None, :, None] * jnp.maximum(age, 0.0)), 0.0)
  return jnp.einsum("bht,bthd,bthv->bhdv", w, k.astype(jnp.float32), v.astype(jnp.float32))


class LightningAttention(nnx.Module):
  """Lightning attention layer (MiniMax-01): x -> SiLU(x W_qkv) split per head
  into q, k, v; the decayed linear attention above; RMSNorm over all heads at
  once; times sigmoid(x W_gate); W_out. `qkv_proj` keeps the checkpoint's fused
  layout [e, h, (q, k, v)]. The decay rates are no params: the call gets the
  layer's index (`ctx.layer`), an int or traced inside the layer scan, and
  derives them from it and `cfg.num_layers`."""

  def __init__(self, cfg: DeltaNetConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.cfg = cfg
    e, h, d, std = cfg.embed_dim, cfg.num_v_heads, cfg.v_head_dim, cfg.init_std
    normal = lambda shape, axes: params.normal(rngs, shape, axes, std, param_dtype)
    self.qkv_proj = normal((e, h, 3 * d), ("embed", "heads", None))
    self.output_gate = normal((e, h, d), ("embed", "heads", "head_dim"))
    self.norm = RMSNorm(
      h * d, NormConfig("rms", cfg.norm_eps), param_dtype=param_dtype, axis_name="heads"
    )
    self.out_proj = normal((h, d, e), ("heads", "head_dim", "embed"))

  def __call__(self, x, ctx):
    """x: [b, s, e] -> (out [b, s, e], stats {}): no softmax, so no max logits.
    Reads ctx.layer and ctx.segment_ids (the decay orders tokens itself)."""
    segment_ids = ctx.segment_ids
    cfg, f32, dt = self.cfg, jnp.float32, x.dtype
    b, s, _ = x.shape
    h, d = cfg.num_v_heads, cfg.v_head_dim
    qkv = jax.nn.silu(jnp.einsum("bse,ehx->bshx", x, self.qkv_proj[...].astype(dt)).astype(f32))
    q, k, v = jnp.split(qkv, 3, axis=-1)  # [b, s, h, d] each
    rates = decay_rates(h, ctx.layer, cfg.num_layers)
    stats = {}
    if ctx.decode:  # S_t = exp(-r) S_{t-1} + k_t v_t^T, o_t = q_t S_t; one new token a row
      state = jnp.exp(-rates)[:, None, None] * ctx.cache["state"]
      state = state + jnp.einsum("bhd,bhv->bhdv", k[:, 0], v[:, 0])
      o, stats["cache"] = jnp.einsum("bhd,bhdv->bhv", q[:, 0], state)[:, None], {"state": state}
    else:
      o = chunked(q, k, v, rates, chunk=cfg.chunk, segment_ids=segment_ids)
    if ctx.cache_len:  # a prefill: the state after each prompt's last token
      stats["cache"] = {"state": prompt_state(k, v, rates, segment_ids)}
    o = self.norm(o.reshape(b, s, h * d)).reshape(b, s, h, d)
    gate = jnp.einsum("bse,ehd->bshd", x, self.output_gate[...].astype(dt)).astype(f32)
    o = o * jax.nn.sigmoid(gate)
    return jnp.einsum("bshd,hde->bse", o.astype(dt), self.out_proj[...].astype(dt)), stats
