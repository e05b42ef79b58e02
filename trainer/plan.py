"""What a config costs on a mesh, from shapes alone: params, per-device bytes of
params / grads / optimizer state, KV-cache bytes, training FLOPs, and (on fake
CPU devices) XLA's own memory analysis and collectives of one compiled step.

Nothing here allocates the model: the state is the run's own abstract state
from `trainer/step.py` (ShapeDtypeStructs carrying their shardings), and a
compile lowers the run's own train step on those.
"""

import collections
import hashlib
import re

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from modeling.attention.linear import DeltaNetConfig
from modeling.attention.mla import MlaConfig
from modeling.decoder import DecoderConfig
from modeling.moe.config import MoeConfig
from parallelism import rules
from trainer import metrics, step
from trainer import state as state_lib

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _shard_fraction(spec: P, mesh) -> float:
  """1 / (number of devices one array is split over) under `spec`."""
  ways = 1
  for entry in spec:
    for axis in (entry,) if isinstance(entry, str) else entry or ():
      ways *= mesh.shape[axis]
  return 1.0 / ways


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


def _bytes_per_device(tree, mesh) -> int:
  """Bytes one device holds of the abstract arrays in `tree` (by their shardings)."""
  return int(
    sum(
      leaf.size * leaf.dtype.itemsize * _shard_fraction(leaf.sharding.spec, mesh)
      for leaf in jax.tree.leaves(tree)
    )
  )


def memory_plan(config, cfg: DecoderConfig, mesh_sizes: dict) -> dict:
  """Per-device bytes of params, grads and optimizer state: the run's own abstract
  state (trainer/step.py) on an abstract mesh of these sizes."""
  mesh = AbstractMesh(tuple(mesh_sizes[a] for a in rules.MESH_AXES), rules.MESH_AXES)
  state = step.build(config, mesh, cfg).abstract_state
  param_bytes = _bytes_per_device(state["params"], mesh)
  opt_bytes = _bytes_per_device(state["opt"], mesh)
  return {
    "params": param_bytes,
    "grads": param_bytes,  # gradients match the params' dtype and sharding.
    "optimizer": opt_bytes,
    "total": 2 * param_bytes + opt_bytes,
  }


def plan(config, cfg: DecoderConfig, mesh_sizes: dict) -> dict:
  kv = kv_bytes_per_token(cfg)
  return {
    "family": config.model.family,
    "mesh": dict(mesh_sizes),
    "step": {k: config.train[k] for k in ("batch_size", "seq_len", "microbatches")},
    "params_total": state_lib.param_count(cfg),
    "params_active": state_lib.active_param_count(cfg),
    "params_mtp": state_lib.param_count(cfg, include_mtp=True) - state_lib.param_count(cfg),
    "kv_bytes_per_token_per_layer": max(kv),
    "kv_bytes_per_token": sum(kv),
    "train_flops_per_token": metrics.train_flops_per_token(cfg, config.train.seq_len),
    "bytes_per_device": memory_plan(config, cfg, mesh_sizes),
  }


def compile_step(config, cfg: DecoderConfig, mesh) -> dict:
  """AOT-compiles the run's train step (trainer/step.py's, as train.py runs it) for
  `mesh` on abstract arrays: XLA's per-device memory analysis and the collectives
  in the compiled HLO."""
  lowered = step.build(config, mesh, cfg).lower()
  compiled = lowered.compile()
  analysis = compiled.memory_analysis()
  memory = {
    name: int(getattr(analysis, f"{name}_size_in_bytes"))
    for name in ("argument", "output", "temp", "alias", "generated_code")
  }
  # Peak live bytes: inputs + outputs + scratch, minus outputs that reuse donated inputs.
  memory["peak"] = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
  hlo = compiled.as_text()
  return {
    "hlo_fingerprint": hlo_fingerprint(lowered.as_text()),
    "memory_per_device": memory,
    "collectives": count_collectives(hlo),
    "whole_expert_gathers": len(whole_expert_gathers(hlo, cfg)),
  }


def hlo_fingerprint(hlo: str) -> str:
  """A short hash of a lowered program's text (StableHLO, before XLA's passes, whose
  output numbers source files in the order a process met them): equal programs,
  equal hashes."""
  return hashlib.sha256(hlo.encode()).hexdigest()[:16]


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
