"""Losses that live with the model: next-token cross-entropy (with z-loss)
and DeepSeek-V3's multi-token prediction loss."""

import jax
import jax.numpy as jnp


def cross_entropy(logits, targets, weights, z_loss: float = 0.0):
  """Mean next-token CE over weighted positions (+ z_loss * log(Z)^2).

  logits: [b, s, v] float32; targets: [b, s] int; weights: [b, s] float.
  Returns (loss, {"ce": ..., "z": ...}).
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  denom = jnp.maximum(weights.sum(), 1.0)
  ce = ((log_z - target_logit) * weights).sum() / denom
  z = (jnp.square(log_z) * weights).sum() / denom
  return ce + z_loss * z, {"ce": ce, "z": z}


def mtp_losses(mtp_logits, targets, weights, segment_ids):
  """Per-depth CE of the MTP heads: [depth].

  At depth k, position i has seen input x[i+k] and predicts y[i+k]
  (= targets[i+k]); positions whose shifted input or target leaves the
  sequence or the document are masked. mtp_logits: list of [b, s, v].
  """
  s = targets.shape[1]
  out = []
  for k, logits in enumerate(mtp_logits, start=1):
    shift = lambda a: jnp.roll(a, -k, axis=1)
    same_doc = shift(segment_ids) == segment_ids
    in_range = jnp.arange(s) < s - k
    w = shift(weights) * same_doc * in_range
    out.append(cross_entropy(logits, shift(targets), w)[1]["ce"])
  return jnp.stack(out)
