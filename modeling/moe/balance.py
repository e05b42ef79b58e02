"""Aux-loss-free load balancing across a whole model (DeepSeek-V3 §2.1.2)."""

import jax.numpy as jnp

from modeling.moe.router import aux_free_update


def _moe_layers(decoder) -> list:
  """(MoE module, index into its stacked rows or None) per MoE layer, in the order
  of the decoder's `aux["expert_load"]` rows: prefix, scanned periods, tail, MTP."""
  return [(b.mlp, p) for b, p in decoder.layers() if b.is_moe]


def update_router_biases(decoder, loads, rate: float):
  """In place: each MoE layer's selection bias moves toward balancing its load.

  loads: [moe_layers, E] (token, slot) counts of the step, `aux["expert_load"]`;
  without the MTP rows when the step left the MTP modules out (their biases stay).
  """
  rows = {}  # id(module) -> (module, [(stack index, load row)])
  for (module, p), load in zip(_moe_layers(decoder), loads, strict=False):
    rows.setdefault(id(module), (module, []))[1].append((p, load))
  for module, entries in rows.values():
    if not module.cfg.aux_free_bias:
      continue
    bias = module.router.aux_free_bias
    if entries[0][0] is None:  # an unstacked layer
      bias[...] = aux_free_update(bias[...], entries[0][1], rate)
    else:  # stacked: rows ordered by period
      stacked = jnp.stack([load for _, load in sorted(entries, key=lambda e: e[0])])
      bias[...] = aux_free_update(bias[...], stacked, rate)
