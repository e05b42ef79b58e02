"""Pallas kernels: each directory holds reference.py (plain jnp, the truth),
kernel.py (Pallas) and ops.py (custom VJP and dispatch)."""

import jax


def triton_params(**settings):
  """Triton launch settings (num_warps, num_stages) on a GPU backend; other backends
  (interpret mode, TPU) take their defaults."""
  if jax.default_backend() != "gpu":
    return None
  from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415

  return pltriton.CompilerParams(**settings)
