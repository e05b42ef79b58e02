"""Sparse attention in plain jnp: each query attends only to its own key slots.

q [b, s, h, d]; k [b, t, kh, d]; v [b, t, kh, dv]; indices [b, s, K] int, the key
positions each query may see (-1 = an empty slot). Every kv head of a query uses
the same slots (DeepSeek Sparse Attention: one top-k set per token, MQA core).
Query head n reads kv head n // (h / kh). sinks [h] (optional): one extra
logit per head that takes probability mass but has no value (gpt-oss). A
query whose slots are all empty gets a zero output. Returns (out [b, s, h, dv] in q's dtype, max_logits [h]: the
largest scaled logit per head over the filled slots, no gradient).

Cost is O(s * K) whatever t is; `chunk` > 0 gathers keys for that many queries
at a time (memory O(chunk * K * d) instead of O(s * K * d)).
"""

import jax
import jax.numpy as jnp


def gather(x, indices):
  """x [b, t, ...], indices [b, c, K] -> [b, c, K, ...] (empty slots read row 0)."""
  return jax.vmap(lambda xb, ib: xb[jnp.maximum(ib, 0)])(x, indices)


def _logits(q, k, indices, scale):
  """-> (logits [b, c, kh, g, K] f32 with empty slots at -inf, valid [b, c, 1, 1, K])."""
  b, c, h, d = q.shape
  kh = k.shape[2]
  kg = gather(k, indices)  # [b, c, K, kh, d]
  qg = q.reshape(b, c, kh, h // kh, d)
  logits = jnp.einsum("bckgd,bcjkd->bckgj", qg, kg, preferred_element_type=jnp.float32) * scale
  valid = (indices >= 0)[:, :, None, None, :]
  return jnp.where(valid, logits, -jnp.inf), valid


def _block(q, k, v, indices, scale, sinks):
  """One chunk of queries -> (out [b, c, h, dv], max logit per head [h])."""
  b, c, h, _ = q.shape
  kh = k.shape[2]
  logits, valid = _logits(q, k, indices, scale)
  max_logits = jnp.max(jax.lax.stop_gradient(logits), axis=(0, 1, 4)).reshape(h)
  m = jnp.max(logits, axis=-1, keepdims=True)
  if sinks is not None:  # [kh, g] extra logits, no value
    sink = sinks.astype(jnp.float32).reshape(1, 1, kh, h // kh, 1)
    m = jnp.maximum(m, sink)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  e = jnp.where(valid, jnp.exp(logits - m), 0.0)
  total = jnp.sum(e, axis=-1, keepdims=True)
  if sinks is not None:
    total = total + jnp.exp(sink - m)
  p = e / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)
  out = jnp.einsum("bckgj,bcjkv->bckgv", p.astype(v.dtype), gather(v, indices))
  return out.reshape(b, c, h, v.shape[-1]).astype(q.dtype), max_logits


def _chunks(x, chunk: int):  # [b, s, ...] -> [s / chunk, b, chunk, ...]
  b, s = x.shape[:2]
  return jnp.swapaxes(x.reshape(b, s // chunk, chunk, *x.shape[2:]), 0, 1)


def _over_chunks(fn, chunk: int, *xs):
  """fn over query chunks of xs ([b, s, ...] each, s padded to the chunk); outputs
  [b, s, ...] (sliced back) and a per-chunk second output reduced by max."""
  s = xs[0].shape[1]
  if chunk <= 0 or chunk >= s:
    return fn(*xs)
  pad = -s % chunk
  padded = [jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=-1
                    if jnp.issubdtype(x.dtype, jnp.integer) else 0) for x in xs]  # fmt: skip
  outs, second = jax.lax.map(lambda a: fn(*a), tuple(_chunks(x, chunk) for x in padded))
  b = outs.shape[1]
  out = jnp.swapaxes(outs, 0, 1).reshape(b, s + pad, *outs.shape[3:])[:, :s]
  return out, jnp.max(second, axis=0)


def attention(q, k, v, indices, *, scale: float, sinks=None, chunk: int = 0):
  """(out [b, s, h, dv], max_logits [h]); see the module docstring."""
  return _over_chunks(lambda q, i: _block(q, k, v, i, scale, sinks), chunk, q, indices)


def slot_probs(q, k, indices, *, scale: float, chunk: int = 0):
  """Attention probabilities on each query's slots, summed over heads and
  L1-normalised: [b, s, K] float32, 0 on empty slots (DSA's indexer target);
  no gradient."""
  q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)

  def fn(q, i):
    logits, _ = _logits(q, k, i, scale)
    p = jax.nn.softmax(logits, axis=-1)  # [b, c, kh, g, K]; all-empty rows give nan
    p = jnp.where(jnp.isnan(p), 0.0, p).sum(axis=(2, 3))
    return p / jnp.maximum(p.sum(-1, keepdims=True), jnp.finfo(jnp.float32).tiny), jnp.zeros(())

  return _over_chunks(fn, chunk, q, indices)[0]
