"""Losses that live with the model: next-token cross-entropy (with z-loss) and
DeepSeek-V3's multi-token prediction loss, from logits or, through the output
head, from the normed hidden states (`head_losses`, optionally over chunks)."""

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


def head_losses(project, head, hidden, targets, weights, *, mtp_hidden=(), segment_ids=None,
                z_loss=0.0, denom=None, mtp_denoms=None, chunks=1):  # fmt: skip
  """The output head's losses: (loss, {"ce", "z"}) as `cross_entropy(project(hidden,
  head), ...)`, and the [depth] CE of the MTP depths' normed outputs `mtp_hidden`
  against their shifted targets (`mtp_targets`; None without MTP).

  chunks > 1: every head (main and MTP) goes through one pass over `chunks`
  strided sequence slices (positions j, j + chunks, ...; each device keeps its own
  positions under context parallelism), so one slice's [b, s / chunks, vocab]
  logits per head live at a time, forward and backward (`chunked_sums`); under a
  mesh each device runs its own tokens against the all-gathered head
  (`rules.over_tokens`). hidden: [b, s, e]; head: [e, vocab]; project(x, head) ->
  float32 logits; denom / mtp_denoms: as `cross_entropy`'s denom, per depth.
  """
  shifted = [mtp_targets(k, targets, weights, segment_ids) for k in range(1, len(mtp_hidden) + 1)]
  hiddens = [hidden, *mtp_hidden]
  all_targets, all_weights = (
    [targets, *(t for t, _ in shifted)],
    [weights, *(w for _, w in shifted)],
  )
  if chunks == 1:
    sums = [_sums(project(h, head), t, w) for h, t, w in zip(hiddens, all_targets, all_weights)]
  else:
    fn = lambda head, *arrays, gather: chunked_sums(project, chunks, gather, head, *arrays)
    stacked = map(jnp.stack, (hiddens, all_targets, all_weights))
    sums = rules.over_tokens(fn, head, *stacked)  # [heads, 2]
  loss, parts = _mean(sums[0], weights, z_loss, denom)
  mtp = [
    _mean(sums[k], w, 0.0, None if mtp_denoms is None else mtp_denoms[k - 1])[1]["ce"]
    for k, (_, w) in enumerate(shifted, start=1)
  ]
  return loss, parts, jnp.stack(mtp) if mtp else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def chunked_sums(project, chunks: int, gather, head, hidden, targets, weights):
  """[heads, 2]: each head's weighted CE sum and weighted log(Z)^2 sum, over `chunks`
  sequence slices in a scan (hidden [heads, b, s, e], targets and weights [heads,
  b, s]); the backward recomputes each slice's logits and sums the head's gradient
  in float32. gather: (head -> the head to project with, one slice's float32
  gradient of that -> head's), e.g. FSDP's all-gather and a reduce-scatter per
  slice, so the sum is only ever as big as the head's shard; None: as it is."""
  return _chunked_fwd(project, chunks, gather, head, hidden, targets, weights)[0]


def _split(chunks: int, *arrays):
  """[heads, b, s, ...] -> [chunks, heads, b, s / chunks, ...]: slice j holds
  positions j, j + chunks, ..."""
  g, b, s = arrays[0].shape[:3]
  split = lambda a: a.reshape(g, b, s // chunks, chunks, *a.shape[3:])
  return tuple(jnp.moveaxis(split(a), 3, 0) for a in arrays)


def _slice_sums(project, whole, chunk):
  """[heads, 2] of one slice."""
  h, t, w = chunk
  return jnp.stack([jnp.stack(_sums(project(h[i], whole), t[i], w[i])) for i in range(len(h))])


def _chunked_fwd(project, chunks, gather, head, hidden, targets, weights):
  whole = gather[0](head) if gather else head
  step = lambda _, chunk: (None, _slice_sums(project, whole, chunk))
  _, sums = jax.lax.scan(step, None, _split(chunks, hidden, targets, weights))
  return sums.sum(0), (head, hidden, targets, weights)


def _chunked_bwd(project, chunks, gather, saved, g):
  head, hidden, targets, weights = saved
  whole = gather[0](head) if gather else head

  def grad(chunk):
    h, t, w = chunk
    _, vjp = jax.vjp(lambda h, whole: _slice_sums(project, whole, (h, t, w)), h, whole)
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
  d_hidden = jnp.moveaxis(d_h, 0, 3).reshape(hidden.shape)
  return d_whole.astype(head.dtype), d_hidden, None, None


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


def mtp_targets(k: int, targets, weights, segment_ids):
  """(targets, weights) of MTP depth k: position i has seen input x[i+k] and
  predicts y[i+k] (= targets[i+k]); it counts when that input and target are in
  the sequence and in position i's document."""
  return jnp.roll(targets, -k, axis=1), mtp_weights(k, weights, segment_ids)
