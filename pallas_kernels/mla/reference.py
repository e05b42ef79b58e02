"""The truth: MLA's absorbed (latent-space) attention in plain jnp.

Per head the query is q_lat (q_nope with W_UK folded in, [b, s, h, c]) and q_pe
([b, s, h, r]); every head shares the keys, the cached latent c_kv [b, s, c] and
the RoPE key k_pe [b, s, r]; the values are the latent itself:
logits = scale * (q_lat . c_kv + q_pe . k_pe), out = softmax(logits) @ c_kv.
Masks as in flash_attention.reference (causal, segments, window). Returns
(out [b, s, h, c], max_logits [h]).
"""

import jax
import jax.numpy as jnp

from pallas_kernels.flash_attention.reference import mask


def attention(q_lat, q_pe, c_kv, k_pe, *, segment_ids, scale: float, window: int = 0):
  logits = jnp.einsum("bqhc,btc->bhqt", q_lat, c_kv, preferred_element_type=jnp.float32)
  logits += jnp.einsum("bqhr,btr->bhqt", q_pe, k_pe, preferred_element_type=jnp.float32)
  logits *= scale
  keep = mask(segment_ids, window)
  max_logits = jnp.max(jnp.where(keep, jax.lax.stop_gradient(logits), -jnp.inf), axis=(0, 2, 3))
  probs = jax.nn.softmax(jnp.where(keep, logits, jnp.finfo(jnp.float32).min), axis=-1)
  return jnp.einsum("bhqt,btc->bqhc", probs.astype(c_kv.dtype), c_kv), max_logits
