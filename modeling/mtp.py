"""DeepSeek-V3 multi-token prediction (V3 §2.2), sequential depth-k modules.

Module k combines the previous depth's hidden state h^{k-1} (the trunk output,
before the final norm, for k = 1) with the embedding of token i+k:
h' = eh_proj([enorm(emb); hnorm(h)]) (embedding first, as in DeepSeek's
weights), runs one decoder block on it and normalises the result for the
shared output head. Embedding and head are the main model's.
"""

import jax.numpy as jnp
from flax import nnx

from modeling.layers import params
from modeling.layers.norms import NormConfig, RMSNorm


class MTPModule(nnx.Module):
  def __init__(
    self,
    block: nnx.Module,
    embed_dim: int,
    norm: NormConfig,
    *,
    rngs: nnx.Rngs,
    init_std: float = 0.02,
    param_dtype=jnp.float32,
  ):
    e = embed_dim
    rms = lambda: RMSNorm(e, norm, param_dtype=param_dtype, axis_name="embed")
    self.enorm, self.hnorm, self.final_norm = rms(), rms(), rms()
    self.eh_proj = params.normal(rngs, (2 * e, e), (None, "embed"), init_std, param_dtype)
    self.block = block

  def __call__(self, h, emb, ctx):
    """h, emb: [b, s, e] -> (h^k [b, s, e], normed h^k for the head, block stats).
    ctx.layer: the index the block runs as (the last layer's: it copies that block)."""
    x = jnp.concatenate([self.enorm(emb), self.hnorm(h)], axis=-1)
    x = x @ self.eh_proj[...].astype(x.dtype)
    h, stats = self.block(x, ctx)
    return h, self.final_norm(h), stats
