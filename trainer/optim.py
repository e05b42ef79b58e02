"""Optimizers built from `config.optim`: AdamW with warmup + cosine/constant
schedule, global-norm clipping, decoupled weight decay on matrices only."""

import jax
import optax

OPTIMIZERS = ("adamw",)
SCHEDULES = ("cosine", "constant")


def validate(o, steps: int):
  if o.name not in OPTIMIZERS:
    raise ValueError(f"optim.name={o.name!r} is not valid; use one of {', '.join(OPTIMIZERS)}")
  if o.schedule not in SCHEDULES:
    raise ValueError(
      f"optim.schedule={o.schedule!r} is not valid; use one of {', '.join(SCHEDULES)}"
    )
  if o.lr <= 0:
    raise ValueError(f"optim.lr={o.lr} must be positive")
  if not 0 <= o.warmup_steps < max(steps, 1):
    raise ValueError(f"optim.warmup_steps={o.warmup_steps} must be in [0, train.steps={steps})")


def schedule(o, steps: int) -> optax.Schedule:
  if o.schedule == "constant":
    return optax.join_schedules(
      [optax.linear_schedule(0.0, o.lr, o.warmup_steps), optax.constant_schedule(o.lr)],
      [o.warmup_steps],
    )
  return optax.warmup_cosine_decay_schedule(
    0.0, o.lr, o.warmup_steps, max(steps, o.warmup_steps + 1), end_value=o.lr * o.min_lr_ratio
  )


def decay_mask(axes: dict) -> dict:
  """True for matrices (>= 2 logical axes besides `layers`); norms, biases, sinks decay-free.

  axes: nested dict of each param's logical axis names (trainer.state.logical_axes).
  """
  return jax.tree.map(
    lambda a: len([n for n in a if n != "layers"]) >= 2,
    axes,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def make(o, steps: int, axes: dict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  lr = schedule(o, steps)
  chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  chain.append(
    optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask(axes))
  )
  return optax.chain(*chain), lr
