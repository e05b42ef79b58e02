"""The truth the kernel is tested against: attention written out in plain jnp.

q: [b, s, h, d]; k: [b, s, kh, d]; v: [b, s, kh, dv]; segment_ids: [b, s] (>= 0);
sinks: [h] or None. Query i sees key j iff j <= i, same segment, and i - j <
window when window > 0. Logits are scale * q.k, soft-capped when softcap > 0;
a sink is an extra logit per head with no value. Returns (out [b, s, h, dv],
max_logits [h]: the largest unmasked logit per head before the soft-cap).
"""

import jax
import jax.numpy as jnp


def mask(segment_ids, window: int = 0):
  """[b, 1, s, s] bool: causal, same segment, within the window."""
  idx = jnp.arange(segment_ids.shape[1])
  keep = idx[None, :] <= idx[:, None]
  if window > 0:
    keep &= idx[:, None] - idx[None, :] < window
  return (keep[None] & (segment_ids[:, :, None] == segment_ids[:, None, :]))[:, None]


def attention(q, k, v, *, segment_ids, scale: float, window: int = 0, softcap=0.0, sinks=None):
  b, s, h, d = q.shape
  g = h // k.shape[2]
  k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)  # the reference may repeat
  logits = jnp.einsum("bqhd,bthd->bhqt", q, k, preferred_element_type=jnp.float32) * scale
  keep = mask(segment_ids, window)
  max_logits = jnp.max(jnp.where(keep, jax.lax.stop_gradient(logits), -jnp.inf), axis=(0, 2, 3))
  if softcap > 0:
    logits = softcap * jnp.tanh(logits / softcap)
  logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
  if sinks is not None:
    sink = jnp.broadcast_to(sinks.astype(jnp.float32)[None, :, None, None], (b, h, s, 1))
    logits = jnp.concatenate([logits, sink], axis=-1)
  probs = jax.nn.softmax(logits, axis=-1)[..., :s]
  out = jnp.einsum("bhqt,bthv->bqhv", probs.astype(v.dtype), v)
  return out, max_logits
