"""Losses that live with the model: next-token cross-entropy (with z-loss)
and DeepSeek-V3's multi-token prediction loss."""

import functools

import jax
import jax.numpy as jnp

from parallelism import rules


def cross_entropy(logits, targets, weights, z_loss: float = 0.0, denom=None):
  """Mean next-token CE over weighted positions (+ z_loss * log(Z)^2).

  logits: [b, s, v] float32; targets: [b, s] int; weights: [b, s] float.
  denom: what the weighted sums are divided by (default: the weights' sum,
  at least 1); a micro-batch passes its whole batch's, so its shares add up.
  Returns (loss, {"ce": ..., "z": ...}).
  """
  return _mean(_sums(logits, targets, weights), weights, z_loss, denom)


def chunked_cross_entropy(project, head, hidden, targets, weights, z_loss=0.0, denom=None,
                          chunks=1):  # fmt: skip
  """`cross_entropy(project(hidden, head), ...)`, with the sequence in `chunks`
  strided slices (positions j, j + chunks, ...; each device keeps its own positions
  under context parallelism) so one slice's [b, s / chunks, vocab] logits live at a
  time, forward and backward (`chunked_sums`). Under a mesh each device runs its
  own tokens against the all-gathered head (`rules.over_tokens`).
  hidden: [b, s, e]; head: [e, vocab]; project(x, head) -> float32 logits."""
  if chunks == 1:
    return cross_entropy(project(hidden, head), targets, weights, z_loss, denom)
  fn = lambda head, *arrays, gather: chunked_sums(project, chunks, gather, head, *arrays)
  sums = rules.over_tokens(fn, head, hidden, targets, weights)
  return _mean(sums, weights, z_loss, denom)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def chunked_sums(project, chunks: int, gather, head, hidden, targets, weights):
  """[weighted CE sum, weighted log(Z)^2 sum] over `chunks` sequence slices in a
  scan; the backward recomputes each slice's logits and sums the head's gradient
  in float32. gather: (head -> the head to project with, one slice's float32
  gradient of that -> head's), e.g. FSDP's all-gather and a reduce-scatter per
  slice, so the sum is only ever as big as the head's shard; None: as it is."""
  return _chunked_fwd(project, chunks, gather, head, hidden, targets, weights)[0]


def _split(chunks: int, *arrays):
  """[b, s, ...] -> [chunks, b, s / chunks, ...]: slice j holds positions j, j + chunks, ..."""
  b, s = arrays[0].shape[:2]
  return tuple(jnp.moveaxis(a.reshape(b, s // chunks, chunks, *a.shape[2:]), 2, 0) for a in arrays)


def _chunked_fwd(project, chunks, gather, head, hidden, targets, weights):
  whole = gather[0](head) if gather else head

  def chunk_sums(_, chunk):
    h, t, w = chunk
    return None, jnp.stack(_sums(project(h, whole), t, w))

  _, sums = jax.lax.scan(chunk_sums, None, _split(chunks, hidden, targets, weights))
  return sums.sum(0), (head, hidden, targets, weights)


def _chunked_bwd(project, chunks, gather, saved, g):
  head, hidden, targets, weights = saved
  whole = gather[0](head) if gather else head

  def grad(chunk):
    h, t, w = chunk
    _, vjp = jax.vjp(lambda h, whole: jnp.stack(_sums(project(h, whole), t, w)), h, whole)
    d_h, d_whole = vjp(g)
    d_whole = d_whole.astype(jnp.float32)
    return (gather[1](d_whole) if gather else d_whole), d_h

  def add(d_whole, chunk):
    d_chunk, d_h = grad(chunk)
    return d_whole + d_chunk, d_h

  # The first chunk's gradient starts the sum (under shard_map it has the per-device
  # type a zero carry would lack); the scan adds the others'.
  xs = _split(chunks, hidden, targets, weights)
  d_whole, d_h0 = grad(jax.tree.map(lambda a: a[0], xs))
  d_whole, d_h = jax.lax.scan(add, d_whole, jax.tree.map(lambda a: a[1:], xs))
  d_h = jnp.concatenate([d_h0[None], d_h])
  d_head = d_whole
  d_hidden = jnp.moveaxis(d_h, 0, 2).reshape(hidden.shape)
  return d_head.astype(head.dtype), d_hidden, None, None


chunked_sums.defvjp(_chunked_fwd, _chunked_bwd)


def _sums(logits, targets, weights):
  """(weighted sum of -log p(target), weighted sum of log(Z)^2)."""
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return ((log_z - target_logit) * weights).sum(), (jnp.square(log_z) * weights).sum()


def _mean(sums, weights, z_loss, denom):
  denom = weight_denominator(weights) if denom is None else denom
  ce, z = sums[0] / denom, sums[1] / denom
  return ce + z_loss * z, {"ce": ce, "z": z}


def weight_denominator(weights):
  return jnp.maximum(weights.sum(), 1.0)


def mtp_weights(k: int, weights, segment_ids):
  """The weights of MTP depth k: position i counts when input x[i+k] and target
  y[i+k] are in the sequence and in position i's document."""
  shift = lambda a: jnp.roll(a, -k, axis=1)
  in_range = jnp.arange(weights.shape[1]) < weights.shape[1] - k
  return shift(weights) * (shift(segment_ids) == segment_ids) * in_range


def mtp_losses(project, head, mtp_hidden, targets, weights, segment_ids, denoms=None, chunks=1):
  """Per-depth CE of the MTP heads: [depth].

  At depth k, position i has seen input x[i+k] and predicts y[i+k]
  (= targets[i+k]); positions whose shifted input or target leaves the
  sequence or the document are masked. mtp_hidden: list of [b, s, e], each
  depth's normed output for the shared head (`project`, `head`); denoms: per depth, as
  `cross_entropy`'s denom (default: each depth's own); chunks: as
  `chunked_cross_entropy`'s.
  """
  out = []
  for k, hidden in enumerate(mtp_hidden, start=1):
    w = mtp_weights(k, weights, segment_ids)
    denom = None if denoms is None else denoms[k - 1]
    shifted = jnp.roll(targets, -k, axis=1)
    parts = chunked_cross_entropy(project, head, hidden, shifted, w, denom=denom, chunks=chunks)[1]
    out.append(parts["ce"])
  return jnp.stack(out)
