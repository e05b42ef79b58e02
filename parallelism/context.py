"""Context parallelism: the sequence split over the mesh's `context` axis.

Activations carry the sequence split in C contiguous chunks (logical axis
`length`); everything but attention is per position (or, for rolls and
convolutions, left to XLA's partitioner). Softmax attention runs in `shard_map`:
each device all-gathers the keys and values (MaxText's all-gather context
parallelism) and attends with its queries. Causal attention gives the query
chunk at the end of the sequence the most keys, so queries are load balanced
first: the sequence is cut in 2C sub-chunks and device d works on sub-chunks d
and 2C-1-d (one from the front, one from the back: the same number of visible
keys on every device). Two collective permutes move the query sub-chunks there
and two move the outputs back; gradients flow back through the transposes
(permutes, and a reduce-scatter for the gathered keys and values). The core is
`blockwise.chunk_attention`, so no device holds [seq, seq] scores.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from modeling.attention import blockwise
from parallelism import rules

AXIS = "context"


def size() -> int:
  """The active mesh's context size (1 outside `rules.activate`)."""
  ctx = rules.active()
  return 1 if ctx is None else ctx[0].shape.get(AXIS, 1)


def _zigzag(C: int):
  """(perm_front, perm_back): where device c sends its first and its second
  half-chunk (sub-chunks 2c and 2c + 1), so that device d holds d and 2C-1-d."""
  home = lambda j: j if j < C else 2 * C - 1 - j
  return [(c, home(2 * c)) for c in range(C)], [(c, home(2 * c + 1)) for c in range(C)]


def _block(half: int) -> int:
  """The blockwise core's block: whole blocks in a half-chunk, at most 512."""
  return half if half <= 512 else math.gcd(half, 512)


def attention(q, k, v, *, segment_ids, positions, scale, window=0, chunk=0, softcap=0.0,
              sinks=None):  # fmt: skip
  """dot_product_attention's contract (q [b, s, h, d], k/v [b, s, kh, d|dv],
  segment_ids/positions [b, s], sinks [h] or None -> (out, max_logits [h])) with
  the sequence split over `context`."""
  mesh, table = rules.active()
  C = mesh.shape[AXIS]
  heads = rules.partition_spec(("kv_heads",), k.shape[2:3], mesh, table)[0]
  batch = rules.partition_spec(("batch",), q.shape[:1], mesh, table)[0]
  rows, x = P(batch, AXIS), P(batch, AXIS, heads, None)
  positions = jnp.zeros_like(segment_ids) if positions is None else positions
  reduce_axes = (*rules.spec_axes(batch), AXIS)
  front, back = _zigzag(C)
  invert = lambda perm: [(b, a) for a, b in perm]

  has_sinks = sinks is not None

  def local(q, k, v, seg, pos, sinks):
    sinks = sinks if has_sinks else None
    d = jax.lax.axis_index(AXIS)
    half = q.shape[1] // 2
    gather = lambda a: jax.lax.all_gather(a, AXIS, axis=1, tiled=True)
    k, v, k_seg, k_pos = gather(k), gather(v), gather(seg), gather(pos)
    outs, tops = [], []
    for part, perm, sub in ((0, front, jnp.where(d % 2 == 0, d, 2 * C - 1 - d)),
                            (1, back, jnp.where(d % 2 == 1, d, 2 * C - 1 - d))):  # fmt: skip
      qs = jax.lax.ppermute(q[:, part * half : (part + 1) * half], AXIS, perm)
      offset = (sub * half).astype(jnp.int32)
      take = lambda a: jax.lax.dynamic_slice_in_dim(a, offset, half, axis=1)
      keys = blockwise.Keys(take(k_seg), k_seg, take(k_pos), k_pos, offset)
      out, top = blockwise.chunk_attention(
        qs, k, v, keys, scale=scale, window=window, chunk=chunk, softcap=softcap,
        sinks=sinks, block=_block(half),
      )  # fmt: skip
      outs.append(jax.lax.ppermute(out, AXIS, invert(perm)))
      tops.append(top)
    top = jax.lax.pmax(jax.lax.stop_gradient(jnp.maximum(*tops)), reduce_axes)
    return jnp.concatenate(outs, axis=1), top

  sink_spec = P(heads)
  # check_vma off: the blockwise core's loops start from zeros that are the same on
  # every device and become per-device values.
  run = jax.shard_map(
    local, mesh=mesh, in_specs=(x, x, x, rows, rows, sink_spec), out_specs=(x, sink_spec),
    check_vma=False,
  )  # fmt: skip
  no_sinks = jnp.zeros(q.shape[2:3], jnp.float32)  # a placeholder the body ignores
  return run(q, k, v, segment_ids, positions, no_sinks if sinks is None else sinks)


def splits_chunks(seq_len: int, chunk: int) -> bool:
  """Whether each device's part of the sequence is whole chunks of a linear layer
  (then `linear_state_pass` passes the state between devices; otherwise XLA's
  partitioner moves the sequence for the in-order pass)."""
  C = size()
  return C > 1 and seq_len % C == 0 and (seq_len // C) % chunk == 0


def linear_state_pass(state_pass, terms, state):
  """A chunked linear-attention state pass (pallas_kernels/chunked_delta) with the
  chunks split over `context`: terms (qd, w, u, kd, P, a) [b, h, n, ...], state
  [b, h, k, v] -> (o [b, h, n, c, v], the final state).

  The pass is linear in the state: over one device's chunks S_out = M S_in + N.
  Each device finds its N (its pass from a zero state) and M (the pass without
  values from the identity), all-gathers the (M, N) of every device, folds those of
  the devices before it into its entering state, and runs its pass from there."""
  mesh, table = rules.active()
  qd = terms[0]
  batch = rules.partition_spec(("batch",), qd.shape[:1], mesh, table)[0]
  heads = rules.partition_spec(("heads",), qd.shape[1:2], mesh, table)[0]
  term_spec, state_spec = P(batch, heads, AXIS), P(batch, heads)

  def local(qd, w, u, kd, P_, a, state):
    d = jax.lax.axis_index(AXIS)
    _, N = state_pass(qd, w, u, kd, P_, a, jnp.zeros_like(state))
    dk = qd.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(dk, dtype=jnp.float32), state.shape[:2] + (dk, dk))
    _, M = state_pass(qd, w, jnp.zeros(u.shape[:-1] + (dk,), u.dtype), kd, P_, a, eye)
    Ms, Ns = jax.lax.all_gather(M, AXIS), jax.lax.all_gather(N, AXIS)  # [C, b, h, ...]
    apply = lambda c, S: jnp.einsum("bhij,bhjv->bhiv", Ms[c], S) + Ns[c]
    entering = jax.lax.fori_loop(0, size(), lambda c, S: jnp.where(c < d, apply(c, S), S), state)
    o, _ = state_pass(qd, w, u, kd, P_, a, entering)
    return o, jax.lax.fori_loop(0, size(), apply, state)

  run = jax.shard_map(
    local, mesh=mesh, in_specs=(term_spec,) * 6 + (state_spec,),
    out_specs=(term_spec, state_spec), check_vma=False,
  )  # fmt: skip
  return run(*terms, state)
