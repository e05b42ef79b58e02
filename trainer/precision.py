"""Precision policy: which dtype each kind of tensor lives and computes in.

- params: `param_dtype` (float32 master weights by default); gradients match.
- compute: `compute_dtype` (bfloat16 by default) for matmul inputs and the
  residual stream; norms, softmax, router and loss run in float32 regardless.
- optimizer state: `opt_state_dtype` for first moments (AdamW's mu, Muon's
  momentum); AdamW's second moment stays in the param dtype.
- FP8-style (`fp8=True`): DeepSeek-V3's tile-scaled E4M3 on the inputs of the
  linear layers (`modeling/layers/fp8.py`); embedding, head, router, norms and
  the attention core keep the compute dtype.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from modeling.config import DTYPES, Options, decoder_config
from modeling.decoder import DecoderConfig
from modeling.layers.fp8 import FP8_DTYPES, Fp8

FP8_DOTS = ("auto", "qdq", "blockwise")


@dataclasses.dataclass(frozen=True)
class Policy:
  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.bfloat16
  opt_state_dtype: Any = jnp.float32
  fp8: Fp8 | None = None


def native_fp8(device=None) -> bool:
  """Whether the device multiplies fp8 operands in hardware (NVIDIA sm_89+)."""
  device = device or jax.devices()[0]
  capability = getattr(device, "compute_capability", None)
  if device.platform != "gpu" or not capability:
    return False
  major, minor = (int(v) for v in str(capability).split(".")[:2])
  return (major, minor) >= (8, 9)


def _check(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def policy(p, device=None) -> Policy:
  """Validates `config.precision` into a Policy; fp8_dot=auto picks `blockwise`
  (real fp8 dots) where the device has fp8 hardware, `qdq` elsewhere."""
  for name in ("param_dtype", "compute_dtype", "opt_state_dtype"):
    _check(
      p[name] in DTYPES,
      f"precision.{name}={p[name]!r} is not valid; use one of {', '.join(DTYPES)}",
    )
  fp8 = None
  if p.fp8:
    _check(
      p.fp8_grads in FP8_DTYPES,
      f"precision.fp8_grads={p.fp8_grads!r} is not valid; use one of {', '.join(FP8_DTYPES)}",
    )
    _check(
      p.fp8_dot in FP8_DOTS,
      f"precision.fp8_dot={p.fp8_dot!r} is not valid; use one of {', '.join(FP8_DOTS)}",
    )
    dot = p.fp8_dot
    if dot == "auto":
      dot = "blockwise" if native_fp8(device) else "qdq"
    fp8 = Fp8(grad_dtype=p.fp8_grads, dot=dot, pow2_scales=p.fp8_pow2_scales)
  return Policy(
    param_dtype=jnp.dtype(p.param_dtype),
    compute_dtype=jnp.dtype(p.compute_dtype),
    opt_state_dtype=jnp.dtype(p.opt_state_dtype),
    fp8=fp8,
  )


SCAN_CHOICES = ("auto", "scan", "unroll")
# compute.scan_layers=auto unrolls models up to this deep (CPU: the scan's per-layer
# slicing and stacking cost more than the compile; accelerators: compile time).
UNROLL_MAX_LAYERS = {"cpu": 16, "other": 4}


def scan_layers(config, platform: str = "") -> tuple[bool, str]:
  """(whether the repeating layers run under the layer scan, why) for
  `compute.scan_layers` ("auto" decided by depth and platform)."""
  choice, n = config.compute.scan_layers, config.model.num_layers
  if choice not in SCAN_CHOICES:
    raise ValueError(
      f"compute.scan_layers={choice!r} is not valid; use one of {', '.join(SCAN_CHOICES)}"
    )
  if choice != "auto":
    return choice == "scan", f"compute.scan_layers={choice}"
  if config.mesh.get("stage", 1) > 1:
    return True, f"compute.scan_layers=auto: mesh.stage={config.mesh.stage} pipelines the scan"
  platform = platform or jax.default_backend()
  limit = UNROLL_MAX_LAYERS["cpu" if platform == "cpu" else "other"]
  scan = n > limit
  return (
    scan,
    f"compute.scan_layers=auto: {n} layers on {platform}, {'>' if scan else '<='} {limit}",
  )


# compute.cpu_ynnpack=False on CPU: XLA's own dot emitters and Eigen instead of its
# YNNPACK library fusions (XLA's default), per compiled step, not process-wide.
NO_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _accepted(options: tuple) -> bool:
  """Whether this jaxlib's XLA knows these compile options (names change across
  versions; an unknown one fails the compile)."""
  try:
    jax.jit(lambda: 0, compiler_options=dict(options)).lower().compile()
  except jax.errors.JaxRuntimeError:
    return False
  return True


def compiler_options(config, platform: str = "") -> dict | None:
  """XLA options the train and eval steps compile with (None: XLA's defaults).
  On CPU, compute.cpu_ynnpack=False keeps YNNPACK out of the step: measured on the
  2-core CPU VM, fine-grained MoE tiny steps ran up to 26% faster without it and the
  dense bench step about the same (benchmarks/results/flops_cpu.txt, perf_cpu.txt)."""
  if config.compute.cpu_ynnpack or (platform or jax.default_backend()) != "cpu":
    return None
  return NO_YNNPACK if _accepted(tuple(NO_YNNPACK.items())) else None


def wants_max_logit(config) -> bool:
  """Whether the step reports the largest attention logit: QK-clip reads every
  head's, `logging.max_logit` logs it. Otherwise nothing reads the per-head maxima
  and XLA drops their reductions from the step."""
  return config.optim.qk_clip_tau > 0 or config.logging.max_logit


def model_options(config) -> Options:
  """What shapes the model besides `config.model`: `config.precision`'s policy, the
  `compute` choices, the DSA training stage and the init scale."""
  pol, c = policy(config.precision), config.compute
  return Options(
    param_dtype=pol.param_dtype.name,
    compute_dtype=pol.compute_dtype.name,
    fp8=pol.fp8,
    remat=c.remat,
    scan_layers=scan_layers(config)[0],
    attention_kernel=c.attention_kernel,
    mla_absorbed=c.mla_absorbed,
    moe_dispatch=c.moe_dispatch,
    moe_capacity_factor=c.moe_capacity_factor,
    moe_ep_capacity_factor=c.moe_ep_capacity_factor,
    moe_matmul=c.moe_matmul,
    ple_host_memory=c.ple_host_memory,
    indexer_stage=config.objective.indexer_stage,
    init_std=config.train.init_std,
    max_logits=wants_max_logit(config),
  )


def model_config(config) -> DecoderConfig:
  """`config.model` validated and expanded under the run's other sections."""
  return decoder_config(config.model, model_options(config))
