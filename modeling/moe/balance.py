"""Aux-loss-free load balancing across a whole model (DeepSeek-V3 §2.1.2)."""

from flax import nnx

from modeling.moe.layer import MoE
from modeling.moe.router import aux_free_update


def update_router_biases(model: nnx.Module, rate: float):
  """In place: each MoE layer's selection bias moves toward balancing the load its
  last forward pass recorded. Stacked (scanned) layers update row by row."""
  for _, module in nnx.iter_graph(model):
    if isinstance(module, MoE) and module.cfg.aux_free_bias:
      bias = module.router.aux_free_bias
      bias[...] = aux_free_update(bias[...], module.load[...], rate)
