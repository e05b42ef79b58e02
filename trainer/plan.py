"""What a config costs on a mesh, from shapes alone: params, per-device bytes of
params / grads / optimizer state, KV-cache bytes, training FLOPs, and (on fake
CPU devices) XLA's own memory analysis and collectives of one compiled step.

Nothing here allocates the model: params are `nnx.eval_shape` structs, the
optimizer state is `jax.eval_shape(tx.init, ...)`, and a compile lowers
`ShapeDtypeStruct`s that carry their shardings.
"""

import collections
import re

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from modeling.config import DecoderConfig, DeltaNetConfig, MlaConfig, MoeConfig
from parallelism import rules
from trainer import metrics, optim, precision
from trainer import state as state_lib

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _shard_fraction(spec: P, mesh) -> float:
  """1 / (number of devices one array is split over) under `spec`."""
  ways = 1
  for entry in spec:
    for axis in (entry,) if isinstance(entry, str) else entry or ():
      ways *= mesh.shape[axis]
  return 1.0 / ways


def _param_fractions(cfg: DecoderConfig, mesh, table) -> dict:
  """Nested dict like the params: the fraction of each param one device holds."""
  _, params, _ = state_lib.abstract(cfg)
  spec = lambda v: rules.partition_spec(state_lib.variable_axes(v), v.shape, mesh, table)
  return state_lib.nested(params, lambda v: _shard_fraction(spec(v), mesh))


def _abstract_params(cfg: DecoderConfig, dtype) -> dict:
  _, params, _ = state_lib.abstract(cfg)
  return state_lib.nested(params, lambda v: jax.ShapeDtypeStruct(v.shape, dtype))


def kv_bytes_per_token(cfg: DecoderConfig) -> list[int]:
  """Per layer, the KV-cache bytes one token adds at decode (compute dtype): K and V
  per kv head for GQA; the compressed latent plus the shared RoPE key for MLA;
  nothing for gated DeltaNet, whose fixed-size state does not grow with length, or
  for a layer that reuses an earlier layer's K/V (Gemma 3n)."""
  itemsize = jnp.dtype(cfg.compute_dtype).itemsize
  out = []
  for block in cfg.blocks:
    a = block.attention
    if isinstance(a, MlaConfig):
      out.append((a.kv_lora_rank + a.qk_rope_head_dim) * itemsize)
    elif isinstance(a, DeltaNetConfig) or a.kv_share == "reuse":  # no cache of its own
      out.append(0)
    else:
      out.append(2 * a.num_kv_heads * a.head_dim * itemsize)
  return out


def memory_plan(config, cfg: DecoderConfig, mesh_sizes: dict, table) -> dict:
  """Per-device bytes of params, grads and optimizer state under the rules `table`."""
  mesh = AbstractMesh(tuple(mesh_sizes[a] for a in rules.MESH_AXES), rules.MESH_AXES)
  fractions = _param_fractions(cfg, mesh, table)
  params = _abstract_params(cfg, cfg.param_dtype)
  per_device = jax.tree.map(lambda p, f: p.size * p.dtype.itemsize * f, params, fractions)
  param_bytes = sum(jax.tree.leaves(per_device))
  state_dtype = precision.policy(config.precision).opt_state_dtype
  tx, _ = optim.make(config.optim, config.train.steps, state_lib.logical_axes(cfg), state_dtype)
  opt_state = jax.eval_shape(tx.init, params)
  # Optimizer leaves shaped like a param are sharded like it; the rest (counts) replicate.
  opt_bytes = optax.tree_utils.tree_map_params(
    tx,
    lambda leaf, f: 0 if state_lib.masked(leaf) else leaf.size * leaf.dtype.itemsize * f,
    opt_state,
    fractions,
    transform_non_params=lambda leaf: leaf.size * leaf.dtype.itemsize,
    is_leaf=state_lib.masked,
  )
  opt_bytes = sum(jax.tree.leaves(opt_bytes))
  return {
    "params": int(param_bytes),
    "grads": int(param_bytes),  # gradients match the params' dtype and sharding.
    "optimizer": int(opt_bytes),
    "total": int(2 * param_bytes + opt_bytes),
  }


def plan(config, cfg: DecoderConfig, mesh_sizes: dict) -> dict:
  kv = kv_bytes_per_token(cfg)
  return {
    "family": config.model.family,
    "mesh": dict(mesh_sizes),
    "params_total": state_lib.param_count(cfg),
    "params_active": state_lib.active_param_count(cfg),
    "params_mtp": state_lib.param_count(cfg, include_mtp=True) - state_lib.param_count(cfg),
    "kv_bytes_per_token_per_layer": max(kv),
    "kv_bytes_per_token": sum(kv),
    "train_flops_per_token": metrics.train_flops_per_token(cfg, config.train.seq_len),
    "bytes_per_device": memory_plan(
      config, cfg, mesh_sizes, rules.with_overrides(config.mesh.rules)
    ),
  }


def _abstract_state(cfg: DecoderConfig, mesh, tx, table):
  """The train state as ShapeDtypeStructs carrying their NamedShardings."""
  param_shardings, rest_shardings = state_lib.shardings(cfg, mesh, table)
  _, params, rest = state_lib.abstract(cfg)
  as_struct = lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype)
  params = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, cfg.param_dtype, sharding=sh),
    state_lib.nested(params, as_struct),
    param_shardings,
  )
  rest = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    state_lib.nested(rest, as_struct),
    rest_shardings,
  )
  replicated = NamedSharding(mesh, P())
  opt = jax.eval_shape(tx.init, params)
  opt = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    opt,
    state_lib.opt_shardings(tx, opt, param_shardings, mesh),
  )
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  return {"step": step, "params": params, "model_state": rest, "opt": opt}


def compile_step(config, cfg: DecoderConfig, mesh) -> dict:
  """AOT-compiles one train step for `mesh` on abstract arrays: XLA's per-device
  memory analysis and the collectives in the compiled HLO."""
  from trainer.trainer import make_steps, mtp_weight_schedule  # noqa: PLC0415 - heavy import.

  t = config.train
  state_dtype = precision.policy(config.precision).opt_state_dtype
  tx, lr = optim.make(config.optim, t.steps, state_lib.logical_axes(cfg), state_dtype)
  graphdef, _, _ = state_lib.abstract(cfg)
  table = rules.with_overrides(config.mesh.rules)
  mtp_weight = mtp_weight_schedule(config.model.mtp, t.steps)
  train_step, _ = make_steps(graphdef, tx, lr, cfg, mtp_weight, mesh, table)
  state = _abstract_state(cfg, mesh, tx, table)
  batch_sharding = rules.batch_sharding(mesh, table)
  tokens = lambda dtype: jax.ShapeDtypeStruct(
    (t.batch_size, t.seq_len), dtype, sharding=batch_sharding
  )
  batch = {
    "inputs": tokens(jnp.int32),
    "targets": tokens(jnp.int32),
    "segment_ids": tokens(jnp.int32),
    "positions": tokens(jnp.int32),
    "weights": tokens(jnp.float32),
  }
  compiled = jax.jit(train_step, donate_argnums=0).lower(state, batch).compile()
  analysis = compiled.memory_analysis()
  memory = {
    name: int(getattr(analysis, f"{name}_size_in_bytes"))
    for name in ("argument", "output", "temp", "alias", "generated_code")
  }
  # Peak live bytes: inputs + outputs + scratch, minus outputs that reuse donated inputs.
  memory["peak"] = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
  hlo = compiled.as_text()
  return {
    "memory_per_device": memory,
    "collectives": count_collectives(hlo),
    "whole_expert_gathers": len(whole_expert_gathers(hlo, cfg)),
  }


def whole_expert_gathers(hlo: str, cfg: DecoderConfig) -> list[str]:
  """Result shapes of all-gathers that assemble every routed expert's weight
  matrix on one device, [.., E, e, f] or [.., E, f, e] (f possibly split over
  `tensor`). Expert parallelism must never emit one."""
  moe = [b.mlp for b in cfg.blocks if isinstance(b.mlp, MoeConfig)]
  if not moe:
    return []
  E, e, f = moe[0].num_experts, moe[0].embed_dim, moe[0].expert_mlp_dim
  found = []
  hlo = re.sub(r"/\*index=\d+\*/", "", hlo)
  for result in re.findall(r"= ([^=\n]*?) all-gather(?:-start)?\(", hlo):
    for dims in re.findall(r"\w+\[([\d,]+)\]", result):
      shape = tuple(int(d) for d in dims.split(","))
      if len(shape) < 3 or shape[-3] != E or e not in shape[-2:]:
        continue
      hidden = shape[-1] if shape[-2] == e else shape[-2]
      if f % hidden == 0:
        found.append(dims)
  return found


def count_collectives(hlo: str) -> dict:
  """Collective ops in HLO text by kind (async `-start` halves counted once)."""
  hlo = re.sub(r"/\*index=\d+\*/", "", hlo)  # tuple results number their elements
  counts = collections.Counter()
  for kind in COLLECTIVES:
    pattern = rf"= [^=\n]*\b{kind}(-start)?\("
    counts[kind] = len(re.findall(pattern, hlo))
  return {k: v for k, v in counts.items() if v}


def human_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  raise AssertionError
