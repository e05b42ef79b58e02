"""The one table that maps logical axis names to mesh axes.

Model code names logical axes only (`embed`, `heads`, `mlp`, ...); this table
decides where they live on the mesh (`data`, `fsdp`, `tensor`, `expert`,
`context`, `stage`).
A dimension that a mesh axis does not divide is left unsharded.

Inside `activate(mesh, table)` (the trainer enters it while tracing a step)
model code can place activations with `constrain(x, logical_axes)` and find
the mesh for `shard_map` with `active()`; outside it both are no-ops, so the
same model runs unsharded in tests and conversions.
"""

import contextlib
import contextvars

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "expert", "context", "stage")

RULES: dict[str, tuple[str, ...]] = {
  # Outside the pipeline (parallelism/pipeline.py: embedding, unscanned layers, head,
  # MTP) `stage` is one more data-parallel axis, splitting the batch and, like fsdp,
  # the weights; inside it, each stage runs its own layers on whole micro-batches.
  "batch": ("data", "fsdp", "expert", "stage"),
  "length": ("context",),  # activations' sequence axis (context parallelism)
  "vocab": ("tensor",),
  # ZeRO-3 over every axis the batch is split on but `data`: the expert axis holds
  # different experts, and shards the dense weights like fsdp (expert weights
  # take `expert` on their experts axis first, so their embed axis gets fsdp only).
  # `context` splits the sequence, and the weights like fsdp, as torchtitan does.
  "embed": ("fsdp", "expert", "context", "stage"),
  "heads": ("tensor",),
  "kv_heads": ("tensor",),
  "mlp": ("tensor",),
  "head_dim": (),
  # MLA's latent axes: q_b / kv_b ([latent, heads, head_dim], 38M params a layer in
  # DeepSeek-V3) shard like embed when heads are not tensor-sharded.
  "q_lora": ("fsdp", "expert", "context", "stage"),
  "kv_lora": ("fsdp", "expert", "context", "stage"),
  # DSA indexer heads: small (64 x 128 per layer in V3.2), replicated.
  "index_heads": (),
  "index_head_dim": (),
  "experts": ("expert",),
  "expert_mlp": ("tensor",),
  # Scanned layers: each pipeline stage holds its own (without stages, whole: each
  # scan step reads one slice).
  "layers": ("stage",),
  "streams": (),  # Gemma 3n's AltUp stream projections: one small matrix per stream.
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
      n = mesh.shape.get(axis, 1)  # an axis the mesh lacks splits nothing
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
  """Sharding of [batch, seq] inputs: batch over every data-like axis, the sequence
  over `length`'s (context parallelism)."""
  split = lambda name: tuple(a for a in rules[name] if mesh.shape.get(a, 1) > 1) or None
  length = split("length")
  return NamedSharding(mesh, P(split("batch"), length) if length else P(split("batch")))


_ACTIVE = contextvars.ContextVar("jaxfrontier_mesh", default=None)


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, table=RULES):
  """Makes `mesh` and the rules `table` visible to model code traced inside."""
  token = _ACTIVE.set((mesh, table))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active():
  """(mesh, table) of the enclosing `activate`, or None."""
  return _ACTIVE.get()


def constrain(x: jax.Array, axes: tuple):
  """Sharding constraint on an activation by logical axis names (None: replicated)."""
  ctx = _ACTIVE.get()
  if ctx is None:
    return x
  mesh, table = ctx
  spec = partition_spec(axes, x.shape, mesh, table)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def token_spec(lead: tuple, mesh: jax.sharding.Mesh, rules=RULES) -> P:
  """How token data is split, by its leading dims: [b, s, ...] over the batch's and
  the sequence's (context) axes; row-major [b * s, ...] rows over both in turn (the
  flattening keeps each device's tokens in one contiguous block of rows)."""
  if len(lead) == 2:
    return partition_spec(("batch", "length"), lead, mesh, rules)
  return partition_spec(("tokens",), lead, mesh, {"tokens": rules["batch"] + rules["length"]})


def over_tokens(fn, head: jax.Array, *arrays):
  """fn(head, *arrays, gather=...) -> sums, run on each device's own tokens and
  summed over the mesh. arrays: [n, b, s, ...] token data; head: an [embed, vocab]
  weight, entering as stored (embed split like FSDP) with `gather` = (all-gather
  in arrays[0]'s dtype, reduce-scatter of a float32 gradient of it), so no device
  ever all-reduces a whole head's gradient. Without a mesh, or where the vocab is
  split too: fn(..., gather=None) under XLA's partitioner."""
  ctx = _ACTIVE.get()
  if ctx is None:
    return fn(head, *arrays, gather=None)
  mesh, rules = ctx
  tok = token_spec(arrays[0].shape[1:3], mesh, rules)
  tokens = tuple(a for entry in tok for a in spec_axes(entry))
  head_spec = partition_spec(("embed", "vocab"), head.shape, mesh, rules)
  embed, vocab = map(spec_axes, tuple(head_spec) + (None,) * (2 - len(head_spec)))
  if not tokens or vocab or not set(embed) <= set(tokens):
    return fn(head, *arrays, gather=None)
  dtype, rest = arrays[0].dtype, tuple(a for a in tokens if a not in embed)

  def gather(w):
    return (
      jax.lax.all_gather(w.astype(dtype), embed, axis=0, tiled=True) if embed else w.astype(dtype)
    )

  def scatter(g):
    g = jax.lax.psum_scatter(g, embed, scatter_dimension=0, tiled=True) if embed else g
    return jax.lax.psum(g, rest) if rest else g

  def local(head, *arrays):
    return jax.lax.psum(fn(head, *arrays, gather=(gather, scatter)), tokens)

  specs = (head_spec,) + (P(None, *tok),) * len(arrays)
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())(head, *arrays)


def top_k(x: jax.Array, k: int):
  """`jax.lax.top_k` over the last axis of token data ([tokens, ...] rows or [b, s,
  ...]), kept split by tokens under the active mesh: XLA's SPMD partitioner does
  not partition TopK and would gather every token's row onto every device."""
  ctx = _ACTIVE.get()
  spec = None if ctx is None else token_spec(x.shape[: 2 if x.ndim > 2 else 1], ctx[0], ctx[1])
  if spec is None or not any(spec):
    return jax.lax.top_k(x, k)
  return jax.shard_map(
    lambda rows: tuple(jax.lax.top_k(rows, k)), mesh=ctx[0], in_specs=spec, out_specs=(spec, spec)
  )(x)


def spec_axes(entry) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (None, a name, or a tuple)."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
