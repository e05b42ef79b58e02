"""Key/value caches for decoding with softmax attention (GQA/MHA/MQA).

A layer's cache is a dict of arrays, so it stacks over scanned layers and
shards like any pytree: `k` [b, T, kv, d], `v` [b, T, kv, v] and `pos` [b, T],
the position each slot holds (-1: empty). MLA keeps only `k`, its latent key
[c_kv | k_pe] [b, T, 1, c + r] (its values are c_kv), and with DSA `index_k`,
the indexer's keys [b, T, 1, d]. Linear-attention layers (modeling/attention/
linear.py, lightning.py) keep no slots, only their recurrent `state` [b, h, k, v]
and the short conv's last inputs `conv` [b, kernel - 1, channels]. A layer that sees only the last
`window` positions, or only its query's block of `chunk` positions, keeps a
ring buffer of that many slots (position p lives in slot p % T); a global
layer keeps T = the generation's maximum length. Each batch row has its own
positions, so prompts of different lengths decode side by side.

Letters: b batch, T slots, kv key/value heads, d head dim, q new positions.
"""

import jax.numpy as jnp

from parallelism import rules

# Logical axes of each cache entry: it shards on the mesh like the activations.
AXES = {
  "k": ("batch", None, "kv_heads", "head_dim"),
  "v": ("batch", None, "kv_heads", "head_dim"),
  "index_k": ("batch", None, None, None),  # DSA's indexer keys (one head)
  "state": ("batch", "heads", None, None),  # linear attention's recurrent state
  "conv": ("batch", None, None),  # and its short conv's last inputs
  "pos": ("batch", None),
}


def slots(window: int, chunk: int, max_len: int) -> int:
  """Slots a layer keeps: its window or chunk (a ring buffer), else max_len."""
  span = window or chunk
  return min(span, max_len) if span else max_len


def fill(entries: dict, segment_ids, size: int) -> dict:
  """The cache after a prefill: entries {name: [b, s, ...]} (k, v, ...) of prompts
  that start at position 0 and are right-padded (segment id 0) -> `size` slots
  holding each row's last `size` prompt positions."""
  s = segment_ids.shape[1]
  lengths = jnp.sum(segment_ids > 0, axis=1)  # [b]
  slot = jnp.arange(size)
  # The last prompt position that lands in each slot (p % size == slot), or -1.
  last = lengths[:, None] - 1  # [b, 1]
  pos = slot + size * jnp.floor_divide(last - slot, size)
  pos = jnp.where(slot <= last, pos, -1)  # [b, size]
  src = jnp.clip(pos, 0, s - 1)

  def take(a):
    return jnp.take_along_axis(a, src.reshape(src.shape + (1,) * (a.ndim - 2)), axis=1)

  return {**{n: take(a) for n, a in entries.items()}, "pos": pos.astype(jnp.int32)}


def append(cache: dict, entries: dict, positions) -> dict:
  """The cache with q new positions [b, q] (entries {name: [b, q, ...]}) written
  to their slots (position p to slot p % T)."""
  size = cache["pos"].shape[1]
  slot = positions % size  # [b, q]
  rows = jnp.arange(positions.shape[0])[:, None]
  new = {n: cache[n].at[rows, slot].set(a.astype(cache[n].dtype)) for n, a in entries.items()}
  return {**new, "pos": cache["pos"].at[rows, slot].set(positions.astype(jnp.int32))}


def mask(cache: dict, positions, window: int = 0, chunk: int = 0):
  """[b, 1, 1, q, T] bool: which slots each query position [b, q] may attend to
  (filled, causal, within the window, in the query's chunk)."""
  key = cache["pos"][:, None, :]  # [b, 1, T]
  query = positions[:, :, None]  # [b, q, 1]
  ok = (key >= 0) & (key <= query)
  if window > 0:
    ok &= query - key < window
  if chunk > 0:
    ok &= key // chunk == query // chunk
  return ok[:, None, None]


def constrain(cache: dict) -> dict:
  """The cache laid out on the active mesh by AXES (as it is without one)."""
  return {name: rules.constrain(a, AXES[name]) for name, a in cache.items()}
