"""The train step's post-update hooks, each finding its layers by module path.

The decoder reports every sublayer's stats under that sublayer's path
("prefix/0/mlp", "stack/blocks/1/attn", "mtp/0/block/mlp"); a hook walks the
merged model to the module at that path and updates it there, stacked
(scanned) layers with their [periods, ...] stats at once. A layer that reported
nothing this step (the MTP block when the step skips it) is left as it is.
"""

from flax import nnx

from modeling.moe.router import aux_free_update
from trainer import qk_clip


def module_at(model: nnx.Module, path: str) -> nnx.Module:
  """The submodule at a "/"-joined path of attribute names and list indices."""
  node = model
  for part in path.split("/"):
    node = node[int(part)] if part.isdigit() else getattr(node, part)
  return node


def update_router_biases(graphdef, params, model_state, layer_stats: dict, rate: float) -> dict:
  """Aux-loss-free balancing (DeepSeek-V3 §2.1.2): every MoE layer with a selection
  bias moves it by rate * sign(mean load - load), its loads from `layer_stats`.
  Returns the new model state (non-param variables)."""
  model = nnx.merge(graphdef, params, model_state)
  for path, stats in layer_stats.items():
    moe = module_at(model, path) if "load" in stats else None
    if moe is not None and moe.cfg.aux_free_bias:
      bias = moe.router.aux_free_bias
      bias[...] = aux_free_update(bias[...], stats["load"], rate)
  return nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))


def clip_attention(graphdef, params, model_state, layer_stats: dict, tau: float) -> dict:
  """MuonClip's QK-clip on every softmax attention layer from its reported max
  logits; returns the params."""
  model = nnx.merge(graphdef, params, model_state)
  for path, stats in layer_stats.items():
    if "max_logits" in stats:
      qk_clip.clip_layer(module_at(model, path), stats["max_logits"], tau)
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))
