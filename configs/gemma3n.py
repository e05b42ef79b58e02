"""Gemma 3n (Google, June 2025), text part: Gemma 3's 4 local : 1 global layers
(window 512) with QK-norm, a scale-free RMS norm on the values and no 1/sqrt(d)
softmax scale, inside Gemma 3n's block: AltUp (4 residual streams, the layer runs
on one), a rank-64 LAuReL bypass beside attention, per-layer embeddings (PLE: a
[262144, layers * 256] table plus a projection of the token embedding, one
256-wide slice gated into the streams after each layer), 95% activation sparsity
in the first 10 layers' gates, and KV sharing: the last layers compute no K/V and
reuse the last earlier local / global layer's. Tied embeddings, logits soft-capped
at 30.

The PLE table is most of the parameters and is read by one row per token, so it
can stay in host memory: --config.compute.ple_host_memory=True.

MatFormer: E2B is nested inside E4B. `model.mlp_dims` gives each layer its own
FFN width, and a sub-model sliced to narrower widths shares its weights with the
full one (modeling/matformer.py); objective.matformer_dims trains one jointly.

Usage: --config configs/gemma3n.py:e4b
"""

from configs import base

_GEMMA3N = dict(
  norm="rms",
  norm_placement="sandwich",
  qk_norm="head",
  v_norm=True,
  query_pre_attn_scalar=1.0,
  activation="gelu_tanh",
  embed_scale=True,
  tie_embeddings=True,
  final_logit_softcap=30.0,
  attention_pattern=("local",) * 4 + ("global",),
  rope_theta=1_000_000.0,
  local_rope_theta=10_000.0,
  norm_eps=1e-6,
  altup=dict(num_inputs=4, laurel_rank=64),
)


def _full(num_layers: int, mlp_dim: int, kv_shared_layers: int) -> dict:
  return dict(
    _GEMMA3N,
    vocab_size=262_400,
    embed_dim=2048,
    num_layers=num_layers,
    num_heads=8,
    num_kv_heads=2,
    head_dim=256,
    mlp_dim=mlp_dim,
    sliding_window=512,
    activation_sparsity=(0.95,) * 10,
    kv_shared_layers=kv_shared_layers,
    per_layer_input=dict(dim=256, vocab_size=262_144),
  )


PRESETS = {
  # 8 layers alternating local / global (a shorter period than the release's 4 : 1,
  # so that every feature fits): layers 0-1 with sparse gates, 2-3 store their K/V,
  # 4-7 reuse them (two identical periods, scanned).
  "tiny": dict(
    model=dict(
      _GEMMA3N,
      vocab_size=384,
      embed_dim=256,
      num_layers=8,
      num_heads=4,
      num_kv_heads=1,
      head_dim=64,
      mlp_dim=768,
      attention_pattern=("local", "global"),
      sliding_window=64,
      activation_sparsity=(0.95,) * 2,
      kv_shared_layers=4,
      altup=dict(num_inputs=4, laurel_rank=16),
      per_layer_input=dict(dim=32),
    ),
    precision=base.CPU_PRECISION,
  ),
  # gemma-3n-E2B: 1.91B "effective" params (without the token and PLE tables).
  "e2b": dict(model=_full(num_layers=30, mlp_dim=8192, kv_shared_layers=10)),
  # gemma-3n-E4B: 4B effective.
  "e4b": dict(model=_full(num_layers=35, mlp_dim=16_384, kv_shared_layers=15)),
}


def get_config(preset: str = "tiny"):
  return base.from_presets("gemma3n", PRESETS, preset)
