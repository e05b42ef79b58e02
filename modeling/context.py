"""What a layer sees besides its input x, in one value the generic code passes along.

The decoder builds a `Context` per layer; the block hands it to its sublayers, and
each reads what its kind needs: positions and documents (every attention), its own
layer index (lightning attention's depth-dependent decay), its slice of the
stream's per-layer inputs (Gemma 3n's per-layer embeddings, a MatFormer FFN
width), what earlier layers left for it (K/V stored for KV-sharing layers), and when
decoding its cache.
New per-layer inputs are new keys here, not new arguments of every block.
"""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Context:
  positions: Any  # [b, s] int
  segment_ids: Any  # [b, s] int; 0 = padding, documents numbered from 1
  layer: Any = 0  # this layer's index (an int, or traced inside the layer scan)
  inputs: dict = dataclasses.field(default_factory=dict)  # this layer's own inputs, by name
  shared: dict = dataclasses.field(default_factory=dict)  # left by earlier layers, by key
  # Generation. A prefill (cache_len > 0) runs the prompts as in training and each
  # attention layer also returns its cache for up to cache_len positions; a decode
  # step (decode) runs new positions against `cache`, this layer's own (its
  # attention's kind of dict), and returns it updated.
  cache_len: int = 0
  decode: bool = False
  cache: Any = None

  def at_layer(self, layer, inputs: dict, cache=None) -> "Context":
    """This context for layer `layer` with its own slice of the per-layer inputs
    and its own cache."""
    return dataclasses.replace(self, layer=layer, inputs=inputs, cache=cache)
