"""Parameters that carry logical axis names.

Every `nnx.Param` here has an `axes` metadata tuple of logical names
(`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`, `layers`, ...);
`parallelism/rules.py` maps them to mesh axes. Modules never name mesh axes.
"""

import jax
import jax.numpy as jnp
from flax import nnx


def normal(rngs: nnx.Rngs, shape, axes, std: float, dtype) -> nnx.Param:
  assert len(shape) == len(axes), (shape, axes)
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype), axes=tuple(axes))


def constant(value: float, shape, axes, dtype) -> nnx.Param:
  assert len(shape) == len(axes), (shape, axes)
  return nnx.Param(jnp.full(shape, value, dtype), axes=tuple(axes))


def logical_axes(variable) -> tuple:
  """The logical axis names of a Param (() for a scalar or unnamed one)."""
  return tuple(variable.get_metadata().get("axes", ()))
