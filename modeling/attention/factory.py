"""Which module an attention layer's config builds: softmax GQA/MHA, MLA, or a
linear-attention layer of `DeltaNetConfig.kind`."""

import jax.numpy as jnp
from flax import nnx

from modeling.attention.dot_product import Attention, AttentionConfig
from modeling.attention.lightning import LightningAttention
from modeling.attention.linear import DeltaNetConfig, GatedDeltaNet, KimiDeltaAttention
from modeling.attention.mla import MLA, MlaConfig

LINEAR = {
  "gated_deltanet": GatedDeltaNet,
  "kda": KimiDeltaAttention,
  "lightning": LightningAttention,
}


def attention_layer(cfg, *, rngs: nnx.Rngs, param_dtype=jnp.float32) -> nnx.Module:
  """The attention module for `cfg` (AttentionConfig | MlaConfig | DeltaNetConfig)."""
  if isinstance(cfg, AttentionConfig):
    return Attention(cfg, rngs=rngs, param_dtype=param_dtype)
  if isinstance(cfg, MlaConfig):
    return MLA(cfg, rngs=rngs, param_dtype=param_dtype)
  if isinstance(cfg, DeltaNetConfig):
    return LINEAR[cfg.kind](cfg, rngs=rngs, param_dtype=param_dtype)
  raise TypeError(f"no attention layer for {type(cfg).__name__}")
