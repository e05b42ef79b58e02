"""Model state as plain pytrees: a graphdef plus a nested dict of param arrays.

Params are created already sharded: the model is built abstractly, each
param's logical axes give its NamedSharding, and the real init runs under
jit with those out_shardings, so the full model never sits on one device.
"""

import jax
from flax import nnx, traverse_util

from modeling.config import DecoderConfig
from modeling.decoder import Decoder
from parallelism import rules


def _nested(flat_state, fn) -> dict:
  return traverse_util.unflatten_dict({path: fn(v) for path, v in flat_state})


def abstract(cfg: DecoderConfig):
  """(graphdef, flat abstract state) without allocating anything."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  return graphdef, nnx.to_flat_state(state)


def logical_axes(cfg: DecoderConfig) -> dict:
  """Nested dict of each param's logical axis names."""
  _, flat = abstract(cfg)
  return _nested(flat, lambda v: tuple(v.get_metadata().get("axes", ())))


def shardings(cfg: DecoderConfig, mesh) -> dict:
  _, flat = abstract(cfg)
  return _nested(
    flat,
    lambda v: jax.sharding.NamedSharding(
      mesh, rules.partition_spec(v.get_metadata().get("axes", ()), v.shape, mesh)
    ),
  )


def param_count(cfg: DecoderConfig) -> int:
  _, flat = abstract(cfg)
  return sum(v.size for _, v in flat)


def init(cfg: DecoderConfig, mesh, seed: int):
  """(graphdef, params) with params initialised directly into their shardings."""
  graphdef, _ = abstract(cfg)

  def create():
    return nnx.to_pure_dict(nnx.state(Decoder(cfg, rngs=nnx.Rngs(seed))))

  params = jax.jit(create, out_shardings=shardings(cfg, mesh))()
  return graphdef, params
