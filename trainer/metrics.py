"""FLOP counts for MFU, device peaks, and the metrics writer (JSONL + terminal)."""

import json
import pathlib

import jax

from modeling.config import DecoderConfig, MlaConfig, MoeConfig

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


def train_flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
  """6 x (active matmul params) + attention scores/values, forward and backward.

  Matmul params exclude the embedding lookup but include the output head; MoE
  layers count the router, the top-k routed experts and the shared experts.
  Attention counts 6 * heads * (qk_dim + v_dim) * keys-seen per layer (PaLM
  appendix B's 12*h*d*T when qk_dim = v_dim; keys-seen is seq_len, or the
  window of sliding-window layers, or the chunk of chunked layers).
  """
  flops = 6 * cfg.embed_dim * cfg.vocab_size
  for block in cfg.blocks:
    attn_params, head_dims, heads = _attention_shape(block.attention)
    span = block.attention.window or getattr(block.attention, "chunk", 0)  # MLA has no chunk
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
  params = a.embed_dim * a.head_dim * (2 * a.num_heads + 2 * a.num_kv_heads)
  return params, 2 * a.head_dim, a.num_heads


def _ffn_params(m) -> int:
  if isinstance(m, MoeConfig):
    routed = 3 * m.embed_dim * m.expert_mlp_dim * m.top_k
    return m.embed_dim * m.num_experts + routed + 3 * m.embed_dim * m.shared_mlp_dim
  return 3 * m.embed_dim * m.mlp_dim


class Writer:
  """Appends one JSON object per record to <workdir>/metrics.jsonl; a no-op
  unless `enabled` (in multi-process runs only process 0 writes)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._file = None
    if enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._file = self.path.open("a")

  def write(self, record: dict):
    if self._file:
      self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
      self._file.flush()

  def close(self):
    if self._file:
      self._file.close()


def _plain(v):
  if hasattr(v, "tolist"):  # numpy scalars and arrays (per-layer MoE stats)
    return v.tolist()
  return v
