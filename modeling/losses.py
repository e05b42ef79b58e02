"""Losses that live with the model: next-token cross-entropy (with z-loss)
and DeepSeek-V3's multi-token prediction loss."""

import jax
import jax.numpy as jnp


def cross_entropy(logits, targets, weights, z_loss: float = 0.0, denom=None):
  """Mean next-token CE over weighted positions (+ z_loss * log(Z)^2).

  logits: [b, s, v] float32; targets: [b, s] int; weights: [b, s] float.
  denom: what the weighted sums are divided by (default: the weights' sum,
  at least 1); a micro-batch passes its whole batch's, so its shares add up.
  Returns (loss, {"ce": ..., "z": ...}).
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  denom = weight_denominator(weights) if denom is None else denom
  ce = ((log_z - target_logit) * weights).sum() / denom
  z = (jnp.square(log_z) * weights).sum() / denom
  return ce + z_loss * z, {"ce": ce, "z": z}


def weight_denominator(weights):
  return jnp.maximum(weights.sum(), 1.0)


def mtp_weights(k: int, weights, segment_ids):
  """The weights of MTP depth k: position i counts when input x[i+k] and target
  y[i+k] are in the sequence and in position i's document."""
  shift = lambda a: jnp.roll(a, -k, axis=1)
  in_range = jnp.arange(weights.shape[1]) < weights.shape[1] - k
  return shift(weights) * (shift(segment_ids) == segment_ids) * in_range


def mtp_losses(mtp_logits, targets, weights, segment_ids, denoms=None):
  """Per-depth CE of the MTP heads: [depth].

  At depth k, position i has seen input x[i+k] and predicts y[i+k]
  (= targets[i+k]); positions whose shifted input or target leaves the
  sequence or the document are masked. mtp_logits: list of [b, s, v];
  denoms: per depth, as `cross_entropy`'s denom (default: each depth's own).
  """
  out = []
  for k, logits in enumerate(mtp_logits, start=1):
    w = mtp_weights(k, weights, segment_ids)
    denom = None if denoms is None else denoms[k - 1]
    out.append(cross_entropy(logits, jnp.roll(targets, -k, axis=1), w, denom=denom)[1]["ce"])
  return jnp.stack(out)
