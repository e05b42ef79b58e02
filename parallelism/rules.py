"""The one table that maps logical axis names to mesh axes.

Model code names logical axes only (`embed`, `heads`, `mlp`, ...); this table
decides where they live on the mesh (`data`, `fsdp`, `tensor`, `expert`).
A dimension that a mesh axis does not divide is left unsharded.
"""

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "expert")

RULES: dict[str, tuple[str, ...]] = {
  "batch": ("data", "fsdp", "expert"),
  "vocab": ("tensor",),
  # ZeRO-3 over every axis the batch is split on but `data`: the expert axis holds
  # different experts, and shards the dense weights like fsdp (expert weights
  # take `expert` on their experts axis first, so their embed axis gets fsdp only).
  "embed": ("fsdp", "expert"),
  "heads": ("tensor",),
  "kv_heads": ("tensor",),
  "mlp": ("tensor",),
  "head_dim": (),
  # MLA's latent axes: q_b / kv_b ([latent, heads, head_dim], 38M params a layer in
  # DeepSeek-V3) need an fsdp axis when heads are not tensor-sharded.
  "q_lora": ("fsdp",),
  "kv_lora": ("fsdp",),
  "experts": ("expert",),
  "expert_mlp": ("tensor",),
  "layers": (),  # scanned layers stay whole: each scan step reads one slice.
  "norm": (),
}


def with_overrides(text: str) -> dict[str, tuple[str, ...]]:
  """RULES with `config.mesh.rules` applied: "name=axis+axis,name=,..." (an empty
  right side replicates). Raises ValueError naming a bad entry."""
  table = dict(RULES)
  for entry in filter(None, (e.strip() for e in text.split(","))):
    name, sep, value = entry.partition("=")
    if not sep or name not in RULES:
      raise ValueError(
        f"mesh.rules entry {entry!r} must be LOGICAL=AXIS[+AXIS...] with LOGICAL one of "
        f"{', '.join(RULES)}"
      )
    axes = tuple(filter(None, value.split("+")))
    bad = [a for a in axes if a not in MESH_AXES]
    if bad or len(set(axes)) != len(axes):
      raise ValueError(
        f"mesh.rules entry {entry!r} names {bad or 'a repeated axis'}; mesh axes are "
        f"{', '.join(MESH_AXES)}, each at most once"
      )
    table[name] = axes
  return table


def partition_spec(axes: tuple, shape: tuple, mesh: jax.sharding.Mesh, rules=RULES) -> P:
  """PartitionSpec for an array with logical `axes`, skipping non-dividing or reused mesh axes."""
  used, spec = set(), []
  for name, size in zip(axes, shape):
    mesh_axes = []
    for axis in rules.get(name, ()):
      n = mesh.shape[axis]
      if n > 1 and axis not in used and size % (n * _product(mesh, mesh_axes)) == 0:
        mesh_axes.append(axis)
    used.update(mesh_axes)
    spec.append(tuple(mesh_axes) if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
  return P(*spec)


def _product(mesh, axes) -> int:
  out = 1
  for a in axes:
    out *= mesh.shape[a]
  return out


def batch_sharding(mesh, rules=RULES) -> NamedSharding:
  """Sharding of [batch, seq] inputs: batch over every data-like axis that divides it."""
  return NamedSharding(mesh, P(tuple(a for a in rules["batch"] if mesh.shape[a] > 1) or None))
