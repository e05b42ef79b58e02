"""FLOP counts for MFU, device peaks, and the metrics writer (JSONL + terminal)."""

import importlib.util
import json
import math
import pathlib
import uuid

import jax
import tensorboardX

from modeling.attention.linear import DeltaNetConfig
from modeling.attention.mla import MlaConfig
from modeling.decoder import DecoderConfig
from modeling.moe.config import MoeConfig

# Dense bf16 peak FLOP/s per device, from vendor spec sheets (no sparsity).
PEAK_FLOPS = {
  "h200": 989e12,
  "h100": 989e12,
  "a100": 312e12,
  "b200": 2250e12,
  "l4": 121e12,
  "tpu v6": 918e12,
  "tpu v5p": 459e12,
  "tpu v5 lite": 197e12,
  "tpu v5e": 197e12,
  "tpu v4": 275e12,
  # Nominal CPU figure so MFU stays defined on a laptop: 2 cores x 3 GHz x 32
  # fp32 FLOP/cycle (AVX2 FMA). Override with train.peak_flops.
  "cpu": 192e9,
}


def peak_flops(override: float = 0.0) -> float:
  if override > 0:
    return override
  kind = jax.devices()[0].device_kind.lower()
  for name, flops in PEAK_FLOPS.items():
    if name in kind:
      return flops
  return PEAK_FLOPS["cpu"] if jax.devices()[0].platform == "cpu" else float("nan")


def mfu_text(mfu: float) -> str:
  """MFU for people: a percentage, or "unknown peak" on a device without one."""
  return "unknown peak" if math.isnan(mfu) else f"{mfu:.1%}"


def train_flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
  """6 x (active matmul params) + attention scores/values, forward and backward.

  Matmul params exclude the embedding lookup but include the output head; MoE
  layers count the router, the top-k routed experts and the shared experts.
  Attention counts 6 * heads * (qk_dim + v_dim) * keys-seen per layer (PaLM
  appendix B's 12*h*d*T when qk_dim = v_dim; keys-seen is seq_len, or the
  window of sliding-window layers, or the chunk of chunked layers). A gated
  DeltaNet layer's core is linear in length: per value head and token, the
  chunk's scores and values (chunk * (dk + dv)) and the state's read, write and
  output (3 * dk * dv; lightning attention has no read for a correction, 2 * dk * dv),
  each a multiply-add, times 3 for the backward.
  """
  flops = 6 * cfg.embed_dim * cfg.vocab_size
  e, n = cfg.embed_dim, cfg.stream.num_inputs if cfg.stream else 0
  if n:  # Gemma 3n: the PLE projection, AltUp's stream projections in and out
    flops += 6 * (e * cfg.num_layers * cfg.stream.per_layer_dim + 2 * (n - 1) * e * e)
  for block in cfg.blocks:
    a = block.attention
    attn_params, head_dims, heads = _attention_shape(a)
    if block.stream:  # LAuReL, the per-layer gate, AltUp's router and coefficients
      u = block.stream
      attn_params += 2 * e * (u.laurel_rank + u.per_layer_dim) + e * n + n**3 + n * n
    if isinstance(a, DeltaNetConfig):
      state = 2 if a.kind == "lightning" else 3  # lightning: no delta-rule correction
      core = a.num_v_heads * (
        a.chunk * (a.k_head_dim + a.v_head_dim) + state * a.k_head_dim * a.v_head_dim
      )
      flops += 6 * (attn_params + _ffn_params(block.mlp) + core)
      continue
    span = a.window or getattr(a, "chunk", 0)  # MLA has no chunk
    keys = min(seq_len, span) if span else seq_len
    flops += 6 * (attn_params + _ffn_params(block.mlp)) + 6 * heads * head_dims * keys
  # Each MTP depth: eh_proj, one more block like the last, and the shared head.
  per_depth = 6 * (2 * cfg.embed_dim * cfg.embed_dim + cfg.embed_dim * cfg.vocab_size)
  last = cfg.blocks[-1]
  attn_params, head_dims, heads = _attention_shape(last.attention)
  per_depth += 6 * (attn_params + _ffn_params(last.mlp)) + 6 * heads * head_dims * seq_len
  return float(flops + cfg.mtp_depth * per_depth)


def _attention_shape(a) -> tuple[int, int, int]:
  """(matmul params, qk_dim + v_dim per head, heads)."""
  if isinstance(a, DeltaNetConfig) and a.kind == "kda":  # q, k, v, o; low-rank gates; beta
    hd = a.num_v_heads * a.v_head_dim
    params = (
      4 * a.embed_dim * hd + 2 * (a.embed_dim + hd) * a.v_head_dim + a.embed_dim * a.num_v_heads
    )
    return params, 2 * a.v_head_dim, a.num_v_heads
  if isinstance(a, DeltaNetConfig) and a.kind == "lightning":  # fused qkv, gate, out
    return 5 * a.embed_dim * a.num_v_heads * a.v_head_dim, 2 * a.v_head_dim, a.num_v_heads
  if isinstance(a, DeltaNetConfig):
    group = a.num_v_heads // a.num_k_heads
    qkvz = a.num_k_heads * (2 * a.k_head_dim + 2 * group * a.v_head_dim)
    params = a.embed_dim * (qkvz + 2 * a.num_v_heads) + a.num_v_heads * a.v_head_dim * a.embed_dim
    return params, a.k_head_dim + a.v_head_dim, a.num_v_heads
  if isinstance(a, MlaConfig):
    qk = a.qk_nope_head_dim + a.qk_rope_head_dim
    if a.q_lora_rank:
      q = a.embed_dim * a.q_lora_rank + a.q_lora_rank * a.num_heads * qk
    else:
      q = a.embed_dim * a.num_heads * qk
    kv = a.embed_dim * (a.kv_lora_rank + a.qk_rope_head_dim)
    kv += a.kv_lora_rank * a.num_heads * (a.qk_nope_head_dim + a.v_head_dim)
    out = a.num_heads * a.v_head_dim * a.embed_dim
    return q + kv + out, qk + a.v_head_dim, a.num_heads
  kv_heads = 0 if a.kv_share == "reuse" else a.num_kv_heads  # reusing layers: no K/V
  params = a.embed_dim * a.head_dim * (2 * a.num_heads + 2 * kv_heads)
  return params, 2 * a.head_dim, a.num_heads


def _ffn_params(m) -> int:
  if isinstance(m, MoeConfig):
    routed = 3 * m.embed_dim * m.expert_mlp_dim * m.top_k
    return m.embed_dim * m.num_experts + routed + 3 * m.embed_dim * m.shared_mlp_dim
  return 3 * m.embed_dim * m.mlp_dim


def check_logging(logging_cfg):
  """Fails before anything compiles if a requested logger is not installed."""
  steps = tuple(logging_cfg.profile_steps)
  if steps and not (len(steps) == 2 and 1 <= steps[0] <= steps[1]):
    raise ValueError(
      f"logging.profile_steps={steps} must be (first, last) with 1 <= first <= last, "
      "e.g. (10, 15); () for no trace"
    )
  if logging_cfg.wandb and importlib.util.find_spec("wandb") is None:
    raise ValueError(
      "logging.wandb=True needs the wandb package: pip install wandb, or set logging.wandb=False"
    )


class Writer:
  """Appends one JSON object per record to <workdir>/metrics.jsonl, and the
  same numbers as TensorBoard scalars (per-layer lists as `name/i`) under
  <workdir>/tensorboard and to wandb when asked; a no-op unless `enabled` (in
  multi-process runs only process 0 writes)."""

  def __init__(self, workdir: str, enabled: bool = True, logging_cfg=None, config: dict = None):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._file = self._tb = self._wandb = None
    if not enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    _drop_cut_line(self.path)
    self._file = self.path.open("a")
    if logging_cfg is not None and logging_cfg.tensorboard:
      self._tb = tensorboardX.SummaryWriter(str(self.path.parent / "tensorboard"))
    if logging_cfg is not None and logging_cfg.wandb:
      import wandb  # noqa: PLC0415 - optional dependency, checked by check_logging.

      # The run's W&B id lives in the workdir: a resumed run continues the same W&B run.
      id_file = self.path.parent / "wandb_run_id"
      if not id_file.is_file():
        id_file.write_text(uuid.uuid4().hex[:12])
      self._wandb = wandb.init(
        project=logging_cfg.wandb_project, dir=str(self.path.parent), config=config,
        id=id_file.read_text().strip(), resume="allow",
      )  # fmt: skip

  def write(self, record: dict):
    if not self._file:
      return
    record = {k: _plain(v) for k, v in record.items()}
    self._file.write(json.dumps(_strict(record), allow_nan=False) + "\n")
    self._file.flush()
    scalars = dict(_scalars(record))
    if self._tb:
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, record["step"])
      self._tb.flush()
    if self._wandb:
      self._wandb.log(scalars, step=record["step"])

  def close(self):
    if self._file:
      self._file.close()
    if self._tb:
      self._tb.close()
    if self._wandb:
      self._wandb.finish()


def _drop_cut_line(path: pathlib.Path):
  """A run killed mid-write leaves its last record without a newline; cut it
  off so the resumed run's first record starts a line of its own."""
  if not path.exists():
    return
  text = path.read_bytes()
  if text and not text.endswith(b"\n"):
    with path.open("r+b") as f:
      f.truncate(text.rfind(b"\n") + 1)


def _scalars(record: dict):
  for name, value in record.items():
    if name == "step":
      continue
    if isinstance(value, (int, float)):
      yield name, value
    elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
      yield from ((f"{name}/{i}", v) for i, v in enumerate(value))


def _plain(v):
  if hasattr(v, "tolist"):  # numpy scalars and arrays (per-layer MoE stats)
    return v.tolist()
  return v


def _strict(value):
  """The record as strict JSON allows: nan/inf become null (a number's absence)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_strict(v) for v in value]
  return value


class Profiler:
  """A jax.profiler trace of steps (first, last) (`logging.profile_steps`) into
  <workdir>/profile, for TensorBoard's profile tab or Perfetto: started before
  the first step, stopped once the last (or the run's last) has run. Process 0
  only; () traces nothing."""

  def __init__(self, steps, run_steps: int, workdir, enabled: bool = True):
    self.first, self.last = tuple(steps) if steps and enabled else (0, -1)
    self.last, self.directory = min(self.last, run_steps), pathlib.Path(workdir) / "profile"

  def before(self, step: int):
    if step == self.first:
      jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)

  def after(self, step: int, step_metrics):
    if self.first <= step == self.last:
      jax.block_until_ready(step_metrics)
      jax.profiler.stop_trace()
