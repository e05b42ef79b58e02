"""One decision per attention layer: which implementation runs its core.

`compute.attention_kernel` asks for one of KERNELS; `choose` turns the request
into what one layer runs, from the layer's features and the platform:

- auto (the default): on CPU, XLA (blockwise past 512 positions, see
  dot_product.BLOCKWISE). On GPU, cuDNN's fused attention
  (`jax.nn.dot_product_attention(implementation="cudnn")`) where its features
  suffice (GQA/MHA with equal q/k/v head dims, bf16 or fp16, no sinks, no
  soft-cap, no chunked mask, no per-head max logits needed), else our Pallas
  kernels where they apply (flash attention with sinks or soft-cap, MLA with
  per-head value dims, DSA's sparse attention, the DeltaNet state pass), else
  XLA. Dense latent-space MLA stays on XLA: on an H100 our latent kernel
  measured slower (10.5 vs 9.6 ms fwd + bwd at 4k tokens). On TPU, Pallas
  (Mosaic) where our kernels apply, else XLA.
- xla, cudnn, pallas, pallas_interpret (Pallas emulated on CPU, for tests):
  forced for every attention layer; one a layer cannot run is a ValueError
  naming the layer's feature and what would work.

`describe` gives the run's first log line: the choice per attention kind.
"""

import dataclasses

import jax

from modeling.attention.dot_product import AttentionConfig
from modeling.attention.linear import DeltaNetConfig
from modeling.attention.mla import MlaConfig

KERNELS = ("auto", "xla", "cudnn", "pallas", "pallas_interpret")
CUDNN_DTYPES = ("bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Request:
  kernel: str = "auto"  # a KERNELS entry
  platform: str = ""  # cpu | gpu | tpu; "" = this process's default backend
  compute_dtype: str = "float32"
  max_logits: bool = False  # the step needs every head's largest logit (QK-clip)


def label(cfg) -> str:
  """The attention kind of a layer, as the log names it."""
  if isinstance(cfg, DeltaNetConfig):
    return {"gated_deltanet": "gated DeltaNet", "kda": "KDA", "lightning": "lightning"}[cfg.kind]
  if isinstance(cfg, MlaConfig):
    sparse = cfg.indexer is not None and cfg.indexer.stage == "sparse"
    return "MLA" + (" latent" if cfg.absorbed else "") + (" + DSA top-k" if sparse else "")
  kind = "chunked" if cfg.chunk else "sliding-window" if cfg.window else "global"
  extras = [name for name, on in (("sinks", cfg.sinks), ("soft-cap", cfg.softcap > 0)) if on]
  return f"{kind} attention" + (f" ({', '.join(extras)})" if extras else "")


def _cannot(cfg, kernel: str, r: Request) -> str | None:
  """Why `kernel` cannot run this layer here, or None if it can."""
  on = r.platform
  if kernel == "cudnn":
    if on != "gpu":
      return f"cuDNN needs a GPU (this is {on})"
    if not isinstance(cfg, AttentionConfig):
      return f"cuDNN's fused attention cannot run {label(cfg)} layers"
    missing = [n for n, on in (("sinks", cfg.sinks), ("soft-cap", cfg.softcap > 0),
                               ("chunked mask", cfg.chunk)) if on]  # fmt: skip
    if missing:
      return f"cuDNN's fused attention has no {missing[0]}"
    if r.compute_dtype not in CUDNN_DTYPES:
      return (
        "cuDNN's fused attention needs precision.compute_dtype bfloat16 or float16, "
        f"not {r.compute_dtype}"
      )
    if cfg.head_dim > 256 or cfg.head_dim % 8:
      return f"cuDNN's fused attention needs head_dim <= 256, a multiple of 8 (not {cfg.head_dim})"
    if r.max_logits:
      return "cuDNN's fused attention reports no per-head max logits, which QK-clip needs"
  if kernel in ("pallas", "pallas_interpret"):
    if kernel == "pallas" and on == "cpu":
      return "Pallas kernels compile for GPU or TPU (on CPU use pallas_interpret)"
    if isinstance(cfg, AttentionConfig) and cfg.chunk:
      return "the flash kernel has no chunked mask"
    if isinstance(cfg, DeltaNetConfig) and cfg.kind == "lightning":
      return "lightning attention has no Pallas kernel"
  return None


def _auto(cfg, r: Request) -> str:
  if r.platform == "cpu":
    return "xla"
  dense_latent = isinstance(cfg, MlaConfig) and cfg.absorbed and cfg.indexer is None
  if r.platform == "gpu" and _cannot(cfg, "cudnn", r) is None:
    return "cudnn"
  if dense_latent or _cannot(cfg, "pallas", r) is not None:
    return "xla"
  return "pallas"


def choose(cfg, r: Request) -> str:
  """The implementation one attention layer (AttentionConfig | MlaConfig |
  DeltaNetConfig) runs under request `r`."""
  if r.kernel not in KERNELS:
    raise ValueError(
      f"compute.attention_kernel={r.kernel!r} is not valid; use one of {', '.join(KERNELS)}"
    )
  r = dataclasses.replace(r, platform=r.platform or jax.default_backend())
  if r.kernel == "auto":
    return _auto(cfg, r)
  why = _cannot(cfg, r.kernel, r)
  if why:
    raise ValueError(
      f"compute.attention_kernel={r.kernel!r} cannot run this model's {label(cfg)} layers: "
      f"{why}; use 'auto' (picks per layer) or 'xla'"
    )
  return r.kernel


def resolve(cfg, r: Request):
  """`cfg` with its `kernel` decided."""
  return dataclasses.replace(cfg, kernel=choose(cfg, r))


def describe(blocks) -> str:
  """'global attention: cudnn; MLA + DSA top-k: pallas; ...' over a model's blocks."""
  seen = {}
  for block in blocks:
    seen.setdefault(label(block.attention), block.attention.kernel)
  return "; ".join(f"{kind}: {kernel}" for kind, kernel in seen.items())
