"""Optimizers built from `config.optim`: AdamW or Muon (+ AdamW), warmup then
cosine / constant / WSD schedules, global-norm clipping, decoupled weight decay.

Muon (Keller Jordan; Moonlight's scaling) goes to the hidden matrices:
Nesterov momentum (beta 0.95), 5 quintic Newton-Schulz steps, and the update
scaled by 0.2 * sqrt(max(fan_in, fan_out)) so its RMS matches AdamW's (about
0.2) and one learning rate and weight decay serve both. Expert stacks
[E, d, f], scanned [layers, ...] and AltUp [streams, e, e] stacks are
orthogonalised per matrix;
multi-axis projections (q [embed, heads, head_dim]) are one matrix between
embed and the rest. MLA's kv_a (latent and shared RoPE key) and kv_b (no-RoPE
key and value) are each one Linear in the reference and one matrix here.
AdamW takes the embedding, output head, router, norms, biases, sinks and the
linear-attention conv taps.
"""

import math
import re

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "constant", "wsd")
DECAY_SHAPES = ("linear", "cosine", "sqrt")

# Logical axes that index independent matrices (each orthogonalised on its own).
STACK_AXES = ("layers", "experts", "streams")
# Params that stay on AdamW under Muon, by name: vocab-sized tables and the router,
# and anything that is not a weight matrix (norm scales, biases, attention sinks).
# weights_proj: DSA indexer gates; per_layer_embed: Gemma 3n's PLE table; the AltUp
# coefficient maps are [n, n*n] and [n, n] (n = 4 streams), no hidden matrices.
ADAM_NAMES = (
  "embed", "lm_head", "router", "weights_proj", "per_layer_embed", "prediction_coefs",
  "correction_coefs",
)  # fmt: skip
ADAM_SUFFIXES = ("bias", "scale", "sinks")  # also never weight-decayed (KDA's dt_bias is 2-D)
# Linear attention's depthwise conv taps [kernel, channels] (`conv`, `q_conv`, ...):
# per-channel filters rather than a matrix, so AdamW (weight-decayed).
CONV_SUFFIX = "conv"


def validate(o, steps: int):
  if o.name not in OPTIMIZERS:
    raise ValueError(f"optim.name={o.name!r} is not valid; use one of {', '.join(OPTIMIZERS)}")
  if o.schedule not in SCHEDULES:
    raise ValueError(
      f"optim.schedule={o.schedule!r} is not valid; use one of {', '.join(SCHEDULES)}"
    )
  if o.decay_shape not in DECAY_SHAPES:
    raise ValueError(
      f"optim.decay_shape={o.decay_shape!r} is not valid; use one of {', '.join(DECAY_SHAPES)}"
    )
  if not (math.isfinite(o.lr) and o.lr > 0):
    raise ValueError(f"optim.lr={o.lr} must be a positive finite number (e.g. 3e-4)")
  if not 0 <= o.warmup_steps < max(steps, 1):
    raise ValueError(f"optim.warmup_steps={o.warmup_steps} must be in [0, train.steps={steps})")
  if o.schedule == "wsd" and not 0 < o.decay_fraction <= 1 - o.warmup_steps / max(steps, 1):
    raise ValueError(
      f"optim.decay_fraction={o.decay_fraction} must be in (0, 1 - warmup_steps / steps]: "
      "the decay starts after the warmup ends"
    )
  try:
    re.compile(o.trainable)
  except re.error as e:
    raise ValueError(f"optim.trainable={o.trainable!r} is not a valid regex: {e}") from None
  if o.qk_clip_tau < 0:
    raise ValueError(f"optim.qk_clip_tau={o.qk_clip_tau} must be >= 0 (0 = off; Kimi K2: 100)")
  if o.qk_clip_measure not in ("forward", "updated"):
    raise ValueError(
      f"optim.qk_clip_measure={o.qk_clip_measure!r} must be 'forward' (Kimi K2) or 'updated'"
    )
  if not 0 <= o.muon_beta < 1 or o.muon_ns_steps < 1:
    raise ValueError(
      f"optim.muon_beta={o.muon_beta} must be in [0, 1) and optim.muon_ns_steps="
      f"{o.muon_ns_steps} >= 1"
    )
  _check_ranges(o)


# Fields -> (what they must be, the test).
_RANGES = {
  "b1": ("in [0, 1)", lambda v: 0 <= v < 1),
  "b2": ("in [0, 1)", lambda v: 0 <= v < 1),
  "eps": ("> 0 (e.g. 1e-8)", lambda v: v > 0),
  "min_lr_ratio": ("in [0, 1]", lambda v: 0 <= v <= 1),
  "weight_decay": (">= 0", lambda v: v >= 0),
  "grad_clip": (">= 0 (0 = off)", lambda v: v >= 0),
}


def _check_ranges(o):
  for name, (wanted, ok) in _RANGES.items():
    if not (math.isfinite(o[name]) and ok(o[name])):
      raise ValueError(f"optim.{name}={o[name]} must be {wanted}")


def _wsd(o, steps: int) -> optax.Schedule:
  """Warmup, stable at lr, then decay over the last decay_fraction of the steps."""
  decay_steps = max(1, round(o.decay_fraction * steps))
  start = steps - decay_steps
  end = o.lr * o.min_lr_ratio
  shape = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + jnp.cos(jnp.pi * p)),
    "sqrt": lambda p: 1.0 - jnp.sqrt(p),
  }[o.decay_shape]

  def fn(step):
    warm = o.lr * step / max(o.warmup_steps, 1)
    p = jnp.clip((step - start) / decay_steps, 0.0, 1.0)
    lr = jnp.where(step < start, o.lr, end + (o.lr - end) * shape(p))
    return jnp.where(step < o.warmup_steps, warm, lr)

  return fn


def schedule(o, steps: int) -> optax.Schedule:
  if o.schedule == "wsd":
    return _wsd(o, steps)
  if o.schedule == "constant":
    return optax.join_schedules(
      [optax.linear_schedule(0.0, o.lr, o.warmup_steps), optax.constant_schedule(o.lr)],
      [o.warmup_steps],
    )
  return optax.warmup_cosine_decay_schedule(
    0.0, o.lr, o.warmup_steps, max(steps, o.warmup_steps + 1), end_value=o.lr * o.min_lr_ratio
  )


def _is_axes(x) -> bool:
  return isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)


def decay_mask(axes: dict) -> dict:
  """True for matrices (>= 2 logical axes besides `layers`) not named as a bias, scale
  or sinks; norms, biases, sinks decay-free.

  axes: nested dict of each param's logical axis names (trainer.state.logical_axes).
  """

  def decays(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    return len([n for n in a if n != "layers"]) >= 2 and not name.endswith(ADAM_SUFFIXES)

  return jax.tree_util.tree_map_with_path(decays, axes, is_leaf=_is_axes)


def muon_dims(path: tuple, axes: tuple) -> MuonDimensionNumbers | None:
  """How Muon sees one param: None (AdamW), or which axes form its matrix.

  Stack axes (`layers`, `experts`) are batch; of the rest, a trailing `embed`
  is the output and everything before it the input (o_proj, down_proj);
  otherwise the first axis is the input and the rest the output (q_proj).
  """
  names = [str(p) for p in path]
  if set(names) & set(ADAM_NAMES) or names[-1].endswith((*ADAM_SUFFIXES, CONV_SUFFIX)):
    return None
  matrix = [i for i, a in enumerate(axes) if a not in STACK_AXES]
  if len(matrix) < 2:
    return None
  if axes[matrix[-1]] == "embed":
    return MuonDimensionNumbers(tuple(matrix[:-1]), (matrix[-1],))
  return MuonDimensionNumbers((matrix[0],), tuple(matrix[1:]))


def muon_labels(axes: dict) -> tuple[dict, dict]:
  """({path: "muon" | "adam"} labels, Muon dimension numbers with None elsewhere)."""
  dims = jax.tree_util.tree_map_with_path(
    lambda path, a: muon_dims(tuple(getattr(k, "key", k) for k in path), a), axes, is_leaf=_is_axes
  )
  labels = jax.tree.map(
    lambda d: "adam" if d is None else "muon",
    dims,
    is_leaf=lambda x: x is None or isinstance(x, MuonDimensionNumbers),
  )
  return labels, dims


def _scale_by_shape(dims, rms: float) -> optax.GradientTransformation:
  """Moonlight's RMS matching: each Muon update times rms * sqrt(max(fan_in, fan_out))."""

  def update(updates, state, params=None):
    del params

    def scale(d, u):
      fan_in = math.prod(u.shape[i] for i in d.reduction_axis)
      fan_out = math.prod(u.shape[i] for i in d.output_axis)
      return u * (rms * math.sqrt(max(fan_in, fan_out)))

    is_dims = lambda x: isinstance(x, MuonDimensionNumbers)
    return jax.tree.map(scale, dims, updates, is_leaf=is_dims), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _muon(o, lr, axes: dict, state_dtype) -> optax.GradientTransformation:
  """Muon on the hidden matrices, AdamW on the rest, sharing lr and weight decay.

  Built from optax's Muon pieces rather than `optax.contrib.muon`: that alias
  runs its Adam branch with Muon's Nesterov flag (NAdam) and without a decay
  mask, where we want plain AdamW with norms, biases and sinks decay-free.
  """
  labels, dims = muon_labels(axes)
  muon_dims_tree = jax.tree.map(
    lambda d: optax.MaskedNode() if d is None else d,
    dims,
    is_leaf=lambda x: x is None or isinstance(x, MuonDimensionNumbers),
  )
  # The Adam branch sees Muon's leaves as empty MaskedNodes; its decay mask must too.
  adam_mask = jax.tree.map(
    lambda label, m: m if label == "adam" else optax.MaskedNode(), labels, decay_mask(axes)
  )
  muon = optax.chain(
    scale_by_muon(
      ns_steps=o.muon_ns_steps,
      beta=o.muon_beta,
      nesterov=True,
      mu_dtype=state_dtype,
      weight_dimension_numbers=lambda _: muon_dims_tree,
    ),
    _scale_by_shape(muon_dims_tree, o.muon_rms),
    optax.add_decayed_weights(o.weight_decay),
    optax.scale_by_learning_rate(lr),
  )
  return optax.partition({"muon": muon, "adam": _adamw(o, lr, adam_mask, state_dtype)}, labels)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm as one multiply by min(1, max_norm / norm).

  optax divides every element by the norm, and XLA will not copy a divide into
  both of AdamW's moment updates, so it writes the clipped gradients out: a
  params-sized buffer at the optimizer step (Qwen3-235B on 64 devices: 5 GiB
  of its peak). A multiply by one scalar fuses into the update."""

  def update(updates, state, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
    return jax.tree.map(lambda t: t * scale.astype(t.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _adamw(o, lr, mask, state_dtype) -> optax.GradientTransformation:
  return optax.adamw(
    lr, b1=o.b1, b2=o.b2, eps=o.eps, mu_dtype=state_dtype, weight_decay=o.weight_decay, mask=mask
  )


def frozen_mask(axes: dict, trainable: str) -> dict:
  """True for params whose "/"-joined path (e.g. `stack/blocks/0/attn/indexer/wk`)
  does not match the regex `trainable`; all False when it is empty."""
  pattern = re.compile(trainable) if trainable else None

  def frozen(path, _):
    return pattern is not None and not pattern.search(
      "/".join(str(getattr(k, "key", k)) for k in path)
    )

  mask = jax.tree_util.tree_map_with_path(frozen, axes, is_leaf=_is_axes)
  if pattern is not None and all(jax.tree.leaves(mask)):
    raise ValueError(f"optim.trainable={trainable!r} matches no parameter path")
  return mask


def make(
  o, steps: int, axes: dict, state_dtype=jnp.float32, trainable: str = ""
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer chain and its lr schedule; first moments kept in `state_dtype`.

  trainable: regex over param paths; the others are frozen (zero gradients, so
  they neither count in the clip norm nor move, weight decay included).
  """
  lr = schedule(o, steps)
  frozen = frozen_mask(axes, trainable)
  freeze = [optax.masked(optax.set_to_zero(), frozen)] if any(jax.tree.leaves(frozen)) else []
  chain = freeze + ([clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else [])
  if o.name == "muon":
    chain.append(_muon(o, lr, axes, state_dtype))
  else:
    chain.append(_adamw(o, lr, decay_mask(axes), state_dtype))
  return optax.chain(*chain, *freeze), lr
