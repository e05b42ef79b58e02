"""MatFormer nesting (Gemma 3n): a sub-model is the full model with each layer's
dense FFN cut to its first `widths[i]` hidden units; everything else is shared.

Two ways to run one:
- inside the full model, `Decoder(..., layer_inputs=layer_inputs(widths))`: each
  layer's dense FFN reads its width from ctx.inputs and masks out the units past it (the same function; the trainer's joint MatFormer loss runs
  the full model and a sub-model on every batch, `train.matformer_dims`);
- standalone, `extract(full, widths)`: a smaller `Decoder` whose FFN weights are
  the leading slices of the full model's (an E2B-style model cut from E4B).
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from modeling.config import scanned_run
from modeling.decoder import Decoder, DecoderConfig
from modeling.layers.mlp import MlpConfig


def check_widths(cfg: DecoderConfig, widths) -> tuple[int, ...]:
  """The per-layer widths as ints, after checking them against the full model."""
  widths = tuple(int(w) for w in widths)
  if len(widths) != cfg.num_layers:
    raise ValueError(
      f"MatFormer widths give {len(widths)} entries for {cfg.num_layers} layers; one per layer"
    )
  for i, (w, block) in enumerate(zip(widths, cfg.blocks, strict=True)):
    if not isinstance(block.mlp, MlpConfig):
      raise ValueError(f"MatFormer widths need dense FFNs; layer {i} is MoE")
    if not 0 < w <= block.mlp.mlp_dim:
      raise ValueError(
        f"MatFormer width {w} of layer {i} must be in [1, {block.mlp.mlp_dim}] (its FFN width)"
      )
  return widths


def layer_inputs(widths) -> dict:
  """The decoder's per-layer inputs that run it as the sub-model of these widths."""
  return {"mlp_width": jnp.asarray(widths, jnp.int32)}


def sub_config(cfg: DecoderConfig, widths) -> DecoderConfig:
  """`cfg` with layer i's FFN `widths[i]` wide; scanned periods regrouped to match."""
  widths = check_widths(cfg, widths)
  blocks = tuple(
    dataclasses.replace(b, mlp=dataclasses.replace(b.mlp, mlp_dim=w))
    for b, w in zip(cfg.blocks, widths, strict=True)
  )
  prefix, periods = scanned_run(blocks, cfg.period, 0)
  return dataclasses.replace(
    cfg, blocks=blocks, prefix=prefix, num_periods=periods if cfg.num_periods else 0
  )


# Decoder attributes holding the layers; every other variable is shared as it is.
_LAYER_GROUPS = ("prefix", "stack", "tail", "mtp")


def extract(full: Decoder, widths) -> Decoder:
  """A standalone sub-model holding the leading slices of `full`'s weights."""
  sub = Decoder(sub_config(full.cfg, widths), rngs=nnx.Rngs(0))
  for (theirs, period), (ours, sub_period) in zip(full.layers(), sub.layers(), strict=True):
    _copy(nnx.state(theirs), nnx.state(ours), period, sub_period)
  top = lambda model: nnx.state(model, lambda path, _: path[0] not in _LAYER_GROUPS)
  _copy(top(full), top(sub), None, None)
  return sub


def _copy(source, target, period, target_period):
  """Each variable of `target` from `source`'s (slice `period` of a scanned stack),
  cut to the target's shape along every axis (the FFN's hidden axis)."""
  src = dict(nnx.to_flat_state(source))
  for path, variable in nnx.to_flat_state(target):
    value = src[path].get_value()
    if period is not None:
      value = value[period]
    current = variable.get_value()
    shape = current.shape[1:] if target_period is not None else current.shape
    value = jnp.asarray(value[tuple(slice(0, n) for n in shape)], current.dtype)
    if target_period is not None:
      value = current.at[target_period].set(value)
    variable.set_value(value)
