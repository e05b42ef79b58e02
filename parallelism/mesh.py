"""Device mesh with axes (data, fsdp, tensor, expert) from `config.mesh`."""

import math

import jax
import numpy as np

from parallelism.rules import MESH_AXES


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry to fill the devices; validates the product."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  fill = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(
      f"mesh sizes {dict(zip(MESH_AXES, sizes))} are invalid: each must be "
      "a positive integer, with at most one -1 to fill the rest"
    )
  known = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(
        f"mesh.{fill[0]}=-1 cannot fill {num_devices} devices: the other axes "
        f"multiply to {known}, which does not divide {num_devices}"
      )
    sizes[MESH_AXES.index(fill[0])] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
      f"{num_devices} are available; make mesh.data*fsdp*tensor*expert match"
    )
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES)
