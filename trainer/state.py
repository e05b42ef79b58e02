"""Model state as plain pytrees: a graphdef plus a nested dict of param arrays.

Params are created already sharded: the model is built abstractly, each
param's logical axes give its NamedSharding, and the real init runs under
jit with those out_shardings, so the full model never sits on one device.
"""

import jax
import optax
from flax import nnx, traverse_util

from modeling.decoder import Decoder, DecoderConfig
from modeling.moe.config import MoeConfig
from parallelism import rules


def nested(flat_state, fn) -> dict:
  """Flat (path, variable) pairs -> nested dict of fn(variable)."""
  return traverse_util.unflatten_dict({path: fn(v) for path, v in flat_state})


def abstract(cfg: DecoderConfig):
  """(graphdef, flat abstract params, flat abstract non-param state) without allocating.

  Non-param state is model variables the optimizer never sees (MoE router
  selection biases, updated by the train step from each step's expert loads).
  """
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_flat_state(params), nnx.to_flat_state(rest)


def variable_axes(variable) -> tuple:
  """A variable's logical axis names (its `axes` metadata)."""
  return tuple(variable.get_metadata().get("axes", ()))


def logical_axes(cfg: DecoderConfig) -> dict:
  """Nested dict of each param's logical axis names."""
  _, params, _ = abstract(cfg)
  return nested(params, variable_axes)


def shardings(cfg: DecoderConfig, mesh, table=rules.RULES) -> tuple[dict, dict]:
  """NamedShardings of (params, non-param state) from the logical axes and `table`."""
  _, params, rest = abstract(cfg)
  one = lambda v: jax.sharding.NamedSharding(
    mesh,
    rules.partition_spec(variable_axes(v), v.shape, mesh, table),
    memory_kind=v.get_metadata().get("memory_kind"),  # Gemma 3n's PLE table: pinned_host
  )
  return nested(params, one), nested(rest, one)


def abstract_weights(cfg: DecoderConfig, mesh, table=rules.RULES) -> dict:
  """{"params", "model_state"} as ShapeDtypeStructs carrying their NamedShardings
  (params in cfg.param_dtype): what a checkpoint restores the weights into."""
  param_shardings, rest_shardings = shardings(cfg, mesh, table)
  _, params, rest = abstract(cfg)
  struct = lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype)
  with_sharding = lambda dtype: (
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype, sharding=sh)
  )
  return {
    "params": jax.tree.map(with_sharding(cfg.param_dtype), nested(params, struct), param_shardings),
    "model_state": jax.tree.map(with_sharding(None), nested(rest, struct), rest_shardings),
  }


def masked(leaf) -> bool:
  """optax.partition's stand-in for a param another branch owns (no state here)."""
  return isinstance(leaf, optax.MaskedNode)


def opt_shardings(tx, opt, param_shardings, mesh):
  """Shardings of the optimizer state `opt` (real or abstract): each tree in it
  that mirrors the params is laid out like them, the rest (counts) replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return optax.tree_utils.tree_map_params(
    tx,
    lambda leaf, sharding: leaf if masked(leaf) else sharding,
    opt,
    param_shardings,
    transform_non_params=lambda _: replicated,
    is_leaf=masked,
  )


def init_opt(tx, params, mesh):
  """tx.init(params) created in its shardings. Left to jit, the zeros land
  uncommitted on one device, and the first train step compiles for that layout,
  then again for the sharded one it returns."""
  param_shardings = jax.tree.map(lambda p: p.sharding, params)
  out = opt_shardings(tx, jax.eval_shape(tx.init, params), param_shardings, mesh)
  return jax.jit(tx.init, out_shardings=out)(params)


def param_count(cfg: DecoderConfig, include_mtp: bool = False) -> int:
  """Total params; MTP modules are left out by default, as in published totals
  (DeepSeek-V3: 671B main model + 14B MTP)."""
  _, params, _ = abstract(cfg)
  return sum(v.size for path, v in params if include_mtp or path[0] != "mtp")


def active_param_count(cfg: DecoderConfig) -> int:
  """Params one token uses: all but the (1 - top_k/E) unselected share of routed experts."""
  inactive = 0
  for block in cfg.blocks:
    m = block.mlp
    if isinstance(m, MoeConfig):
      per_expert = 3 * m.embed_dim * m.expert_mlp_dim
      per_expert += (2 * m.expert_mlp_dim + m.embed_dim) if m.expert_bias else 0
      inactive += per_expert * (m.num_experts - m.top_k)
  return param_count(cfg) - inactive


def init(cfg: DecoderConfig, mesh, seed: int, table=rules.RULES):
  """(graphdef, params, model_state), initialised directly into their shardings."""
  graphdef, _, _ = abstract(cfg)

  def create():
    _, params, rest = nnx.split(Decoder(cfg, rngs=nnx.Rngs(seed)), nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  params, model_state = jax.jit(create, out_shardings=shardings(cfg, mesh, table))()
  return graphdef, params, model_state
