"""`mla_attention`: MLA in latent space on the flash-attention kernels.

Latent-space MLA is multi-query attention whose one key head is the cache row
[c_kv, k_pe] (width c + r) and whose values are that row's first c columns. The
flash kernels' shared-K/V mode (flash_attention/kernel.py) runs exactly that:
each key tile is loaded once and serves as keys and values, and the value
gradient is added into dk's first c columns; so there is no separate kernel.py
here. Its one key head would leave the dk/dv kernel one program per key block;
`dkv_heads` (default 1) gives each query head its own program and partial sum.
Defaults from an H100 sweep (benchmarks/results/kernels_h100.txt): 32 x 32 blocks at
4 warps with no pipelining (10.5 ms fwd + bwd at 4k tokens, XLA 9.6 ms; 64 x 64:
13.4 ms; 64 x 32, 32 x 64 overflowed shared memory; 2 stages or 8 warps slower).
"""

import jax.numpy as jnp

from pallas_kernels.flash_attention import ops as flash_ops
from pallas_kernels.mla import reference


def mla_attention(
  q_lat, q_pe, c_kv, k_pe, *, segment_ids, scale: float, window: int = 0,
  block_q: int = 32, block_k: int = 32, num_warps=4, num_stages=1, dkv_heads: int = 1,
  implementation=None, interpret: bool = False,
):  # fmt: skip
  """(out [b, s, h, c], max_logits [h]); see reference.attention."""
  implementation = implementation or ("pallas" if interpret else flash_ops.default_implementation())
  if implementation not in flash_ops.IMPLEMENTATIONS:
    raise ValueError(
      f"implementation={implementation!r} must be one of {flash_ops.IMPLEMENTATIONS}"
    )
  if implementation == "reference":
    kw = dict(segment_ids=segment_ids, scale=scale, window=window)
    return reference.attention(q_lat, q_pe, c_kv, k_pe, **kw)
  q = jnp.concatenate([q_lat, q_pe.astype(q_lat.dtype)], axis=-1)  # [b, s, h, c + r]
  k = jnp.concatenate([c_kv, k_pe.astype(c_kv.dtype)], axis=-1)[:, :, None]  # [b, s, 1, c + r]
  cfg = flash_ops.KernelConfig(
    float(scale), 0.0, int(window), block_q, block_k, bool(interpret), False,
    value_dim=c_kv.shape[-1], num_warps=num_warps, num_stages=num_stages, dkv_heads=dkv_heads,
  )  # fmt: skip
  return flash_ops.pad_and_run(q, k, None, segment_ids, None, cfg)
