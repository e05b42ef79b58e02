"""Sparse upcycling: a dense checkpoint becomes the starting point of an MoE run.

Every FFN becomes the routed experts of an MoE layer (Komatsuzaki et al. 2022);
everything else (attention, norms, embedding, head) is copied.

- granularity G = 1: every expert is an exact copy of the dense FFN.
- G > 1 (fine-grained, NVIDIA's "virtual groups"): the FFN's intermediate dim
  is cut into G segments (columns of gate/up, rows of down); expert i holds
  segment i mod G, so any G consecutive experts make up the whole FFN. The down
  projection is scaled by G: with renormalised top-k weights (sum 1) and a
  router that picks whole groups, the experts' weighted sum is the dense FFN.
- Router: zeros (all experts tie; top-k takes the first k, whole groups when k
  is a multiple of G, so the MoE's output equals the dense model's exactly) or
  small Gaussian noise (`router_std`).
- `noise` > 0 adds Gaussian noise of that fraction of each weight's std to every
  expert copy, to break the symmetry between copies.
- Params the dense model lacks (shared experts, router biases) and the
  optimizer state start fresh, as in a new run.
"""

import copy
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from configs import base
from trainer.trainer import Trainer

ROUTER_INITS = ("zeros", "noise")
_EXPERT_WEIGHTS = ("gate_proj", "up_proj", "down_proj")


def dense_config(config):
  """The dense model an MoE `config` is upcycled from: the same with dense FFNs."""
  dense = copy.deepcopy(config)
  dense.unlock()
  dense.model.ffn_pattern = ("dense",)
  dense.model.first_dense_layers = 0
  dense.model.moe = base.get_config().model.moe  # a dense run's unused defaults
  return dense


def check(config, granularity: int, router_init: str):
  m = config.model
  if "moe" not in m.ffn_pattern:
    raise ValueError("upcycling needs an MoE target: set model.ffn_pattern, e.g. \"('moe',)\"")
  if granularity < 1 or m.mlp_dim % granularity or m.moe.expert_mlp_dim * granularity != m.mlp_dim:
    raise ValueError(
      f"model.moe.expert_mlp_dim={m.moe.expert_mlp_dim} must be model.mlp_dim={m.mlp_dim} "
      f"/ granularity={granularity}"
    )
  if m.moe.num_experts % granularity:
    raise ValueError(
      f"model.moe.num_experts={m.moe.num_experts} must be a multiple of granularity={granularity}"
    )
  if router_init not in ROUTER_INITS:
    raise ValueError(f"router_init={router_init!r} is not valid; use one of {ROUTER_INITS}")


def _experts(dense, num_experts: int, granularity: int, name: str):
  """Dense [.., e, f] (gate/up) or [.., f, e] (down) -> [.., E, e, f/G] / [.., E, f/G, e]."""
  axis = -1 if name != "down_proj" else -2
  segments = jnp.split(dense, granularity, axis=axis)
  if name == "down_proj":
    segments = [s * granularity for s in segments]
  return jnp.stack([segments[i % granularity] for i in range(num_experts)], axis=-3)


def upcycle_params(
  dense: dict,
  fresh: dict,
  *,
  granularity=1,
  router_init="zeros",
  router_std=0.02,
  noise=0.0,
  seed=0,
) -> dict:
  """Flat {path: array} dicts: the dense params and a freshly initialised MoE's
  -> the MoE's params, upcycled."""
  key = jax.random.key(seed)
  out = {}
  for path, value in fresh.items():
    key, sub = jax.random.split(key)
    if path[-2:-1] == ("experts",) and path[-1] in _EXPERT_WEIGHTS:
      source = dense[path[:-2] + path[-1:]]
      num_experts = value.shape[-3]
      new = _experts(source, num_experts, granularity, path[-1]).astype(value.dtype)
      if noise > 0:
        std = jnp.std(source)
        new = new + (noise * std * jax.random.normal(sub, new.shape)).astype(new.dtype)
      out[path] = new
    elif path[-2:] == ("router", "kernel"):
      scale = router_std if router_init == "noise" else 0.0
      out[path] = (scale * jax.random.normal(sub, value.shape)).astype(value.dtype)
    elif path in dense:
      if dense[path].shape != value.shape:
        raise ValueError(f"{'/'.join(path)}: dense {dense[path].shape} vs MoE {value.shape}")
      out[path] = dense[path]
    else:
      out[path] = value  # MoE-only (shared experts, router bias): fresh init.
  return out


def upcycle(config, dense_workdir: str, workdir: str, **options) -> int:
  """Restores the dense run in `dense_workdir` (its model = `config` with dense
  FFNs), writes the upcycled MoE as step 0 of a run in `workdir`. Training it is
  `scripts/train.py` with the same config and workdir. Returns the dense step.
  `options` are `upcycle_params`'s."""
  check(config, options.get("granularity", 1), options.get("router_init", "zeros"))
  if not any((pathlib.Path(dense_workdir) / "checkpoints").glob("[0-9]*")):
    raise ValueError(f"no checkpoint in {dense_workdir}/checkpoints to upcycle")
  source = Trainer(dense_config(config), dense_workdir)  # restores; writes nothing
  target = Trainer(config, workdir)
  if target.checkpointer.latest_step() is not None:
    raise ValueError(f"{workdir} already has checkpoints; upcycle into a new workdir")
  flat = lambda tree: traverse_util.flatten_dict(tree)
  params = upcycle_params(flat(source.state["params"]), flat(target.state["params"]), **options)
  shardings = jax.tree.map(lambda x: x.sharding, target.state["params"])
  target.state["params"] = jax.device_put(traverse_util.unflatten_dict(params), shardings)
  target.checkpointer.save(0, target.state, target.data_iter, target.config_dict)
  target.checkpointer.close()
  source.checkpointer.close()
  target.close()
  source.close()
  return int(np.asarray(source.state["step"]))
