"""Specs for modeling/hf on MoE families: tiny random HF models load, match HF
logits and route every token to the same experts.

As in test_hf_parity.py, ALL weights are random (norm scales, biases, sinks and
DeepSeek's e_score_correction_bias too). Routing is checked two ways: our
per-layer expert loads (aux["expert_load"]) against counts of the experts HF's
routers picked, and our loaded routers, fed the exact hidden states HF's
routers saw (forward hooks), against HF's per-token choices and weights.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from modeling import hf
from tests import hf_common
from tests.hf_common import SEQ, TOL
from tests.hf_common import tokens as _tokens


# DeepSeek MLA and MoE sizes shared by the V3 and V3.2 cases.
_DEEPSEEK = dict(
  num_key_value_heads=4,
  q_lora_rank=32,
  kv_lora_rank=16,
  qk_nope_head_dim=16,
  qk_rope_head_dim=8,
  v_head_dim=16,
  first_k_dense_replace=1,
  n_routed_experts=16,
  num_experts_per_tok=4,
  moe_intermediate_size=32,
  n_group=4,
  topk_group=2,
)

# name -> (HF model class, HF config class, config kwargs).
CASES = {
  # MLA (q LoRA, interleaved rope), YaRN with mscale != mscale_all_dim, 1 dense
  # layer then 3 scanned MoE layers: 16 experts in 4 groups, top-4 from the best
  # 2 groups, sigmoid + correction bias, 2 shared experts, routed scale 2.5.
  "deepseek_v3": (
    transformers.DeepseekV3ForCausalLM,
    transformers.DeepseekV3Config,
    dict(
      _DEEPSEEK,
      num_hidden_layers=4,
      head_dim=8,  # HF's rope width; DeepseekV3Config sets it to qk_rope_head_dim.
      max_position_embeddings=64,
      n_shared_experts=2,
      routed_scaling_factor=2.5,
      rope_parameters=dict(
        rope_type="yarn",
        rope_theta=10_000.0,
        factor=4.0,
        original_max_position_embeddings=16,
        mscale=1.0,
        mscale_all_dim=0.5,
      ),
    ),
  ),
  # V3 plus DeepSeek Sparse Attention: each query keeps its top-8 of up to 32 keys
  # by a 16-head indexer (half-split RoPE on its first 8 of 16 dims, LayerNorm key).
  # 16 heads, not 4: a key whose ReLU scores are 0 in every head ties at exactly 0,
  # and torch's top-k breaks ties unlike XLA's (lower position first); with 16
  # heads that has odds ~2^-16 per pair.
  "deepseek_v32": (
    transformers.DeepseekV32ForCausalLM,
    transformers.DeepseekV32Config,
    dict(
      _DEEPSEEK,
      num_hidden_layers=3,
      n_shared_experts=1,
      index_n_heads=16,
      index_head_dim=16,
      index_topk=8,
    ),
  ),
  # GLM-5: V3.2's layers with values wider than the query/key heads and an
  # indexer that rotates interleaved RoPE pairs; one expert group.
  "glm5": (
    transformers.GlmMoeDsaForCausalLM,
    transformers.GlmMoeDsaConfig,
    dict(
      _DEEPSEEK,
      num_hidden_layers=3,
      v_head_dim=24,
      n_group=1,
      topk_group=1,
      n_shared_experts=1,
      index_n_heads=16,
      index_head_dim=16,
      index_topk=8,
    ),
  ),
  # Gated DeltaNet x3 then gated softmax attention (1 + w norms, QK-norm, 1/4
  # rotary); layer 0 dense (mlp_only_layers), then softmax top-2 of 8 experts plus a
  # sigmoid-gated shared expert. Key heads 2 serve 4 value heads. rms_norm_eps 1e-5:
  # strongly decayed heads read outputs near 1e-4, which the gated norm scales by up
  # to 1/sqrt(eps); at 1e-6 that turns float32 rounding into 2e-4 logit noise that
  # shifts with XLA's fusion choices (HF float32 itself is 6e-5 off float64 there).
  "qwen3_next": (
    transformers.Qwen3NextForCausalLM,
    transformers.Qwen3NextConfig,
    dict(
      num_hidden_layers=4,
      linear_num_key_heads=2,
      linear_num_value_heads=4,
      linear_key_head_dim=16,
      linear_value_head_dim=8,
      num_experts=8,
      num_experts_per_tok=2,
      moe_intermediate_size=32,
      shared_expert_intermediate_size=48,
      mlp_only_layers=[0],
      rms_norm_eps=1e-5,
    ),
  ),
  # KDA x3 then MLA without RoPE (plain q_proj; 1/sqrt(qk dim) scale); layer 0 dense,
  # then sigmoid top-2 of 8 experts in 2 groups (best 1 group) with a correction
  # bias, one shared expert and routed scale 2.446. 4 KDA heads of 16.
  "kimi_linear": (
    transformers.KimiLinearForCausalLM,
    transformers.KimiLinearConfig,
    dict(
      num_hidden_layers=4,
      num_key_value_heads=4,  # MLA expands to every head; HF repeats kv by heads / this
      q_lora_rank=None,
      kv_lora_rank=16,
      qk_nope_head_dim=16,
      qk_rope_head_dim=8,
      v_head_dim=16,
      linear_num_heads=4,
      linear_head_dim=16,
      num_local_experts=8,
      num_experts_per_tok=2,
      moe_intermediate_size=32,
      n_group=2,
      topk_group=1,
      layer_types=["linear_attention"] * 3 + ["full_attention"],
      mlp_layer_types=["dense"] + ["sparse"] * 3,
    ),
  ),
  # MoE on every 2nd layer (pattern dense, moe), softmax top-2 of 8, not renormalised.
  "qwen3_moe": (
    transformers.Qwen3MoeForCausalLM,
    transformers.Qwen3MoeConfig,
    dict(
      num_hidden_layers=4,
      decoder_sparse_step=2,
      num_experts=8,
      num_experts_per_tok=2,
      moe_intermediate_size=32,
      norm_topk_prob=False,
    ),
  ),
  # q/k/v bias; layer 0 dense (mlp_only_layers), then softmax top-2 of 8 not renormalised
  # plus a sigmoid-gated shared expert; a window of 8 on the even layers below 2.
  "qwen2_moe": (
    transformers.Qwen2MoeForCausalLM,
    transformers.Qwen2MoeConfig,
    dict(
      num_hidden_layers=3,
      mlp_only_layers=[0],
      num_experts=8,
      num_experts_per_tok=2,
      moe_intermediate_size=32,
      shared_expert_intermediate_size=48,
      norm_topk_prob=False,
      use_sliding_window=True,
      sliding_window=8,
      max_window_layers=2,
    ),
  ),
  # Every FFN softmax top-2 of 8 renormalised (experts of the FFN width), a window of 8.
  "mixtral": (
    transformers.MixtralForCausalLM,
    transformers.MixtralConfig,
    dict(
      num_hidden_layers=2,
      intermediate_size=32,
      num_local_experts=8,
      num_experts_per_tok=2,
      sliding_window=8,
    ),
  ),
  # Half-rotary heads, q/k/v bias, QK-norm, 1 dense layer, sigmoid routing
  # over 2 groups of which 1 is used, a shared expert.
  "glm4_moe": (
    transformers.Glm4MoeForCausalLM,
    transformers.Glm4MoeConfig,
    dict(
      num_hidden_layers=3,
      first_k_dense_replace=1,
      n_routed_experts=16,
      num_experts_per_tok=4,
      moe_intermediate_size=32,
      n_group=2,
      topk_group=1,
      routed_scaling_factor=2.5,
      use_qk_norm=True,
      attention_bias=True,
      rope_parameters=dict(rope_type="default", rope_theta=10_000.0, partial_rotary_factor=0.5),
    ),
  ),
  # Sinks, sliding (window 8) / full layers, q/k/v/o biases, biased router with a
  # softmax over the top-2 logits, interleaved gate-up experts with biases, a
  # SwiGLU clamp low enough to bind (1.0, released: 7.0). The released YaRN: x32
  # over 4096 with an unrounded correction range (truncate=False).
  "gpt_oss": (
    transformers.GptOssForCausalLM,
    transformers.GptOssConfig,
    dict(
      num_hidden_layers=4,
      num_local_experts=8,
      num_experts_per_tok=2,
      intermediate_size=32,
      sliding_window=8,
      swiglu_limit=1.0,
      max_position_embeddings=131_072,
      rope_parameters=dict(
        rope_type="yarn",
        rope_theta=150_000.0,
        factor=32.0,
        beta_fast=32.0,
        beta_slow=1.0,
        original_max_position_embeddings=4096,
        truncate=False,
      ),
    ),
  ),
  # 8 layers: RoPE on 3 of 4 (chunks of 8, L2 QK-norm, Llama-3 scaling), NoPE every
  # 4th with temperature tuning (floor 4, so it acts within 32 tokens); MoE on odd
  # layers: sigmoid top-1 scaling the expert input, plus the shared expert.
  "llama4": (
    transformers.Llama4ForCausalLM,
    transformers.Llama4TextConfig,
    dict(
      num_hidden_layers=8,
      intermediate_size=32,
      intermediate_size_mlp=96,
      num_local_experts=4,
      num_experts_per_tok=1,
      interleave_moe_layer_step=2,
      attention_chunk_size=8,
      floor_scale=4,
      attn_scale=0.5,
      rope_parameters=dict(
        rope_type="llama3",
        rope_theta=500_000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
      ),
    ),
  ),
  # Lightning attention on layers 0 and 2 (depth-dependent decays, the second one
  # from the scanned period index), softmax attention with a window of 8 on 1 and 3;
  # DeepNorm residuals with every alpha and beta off 1; softmax top-2 of 8 renormalised.
  "minimax01": (
    transformers.MiniMaxForCausalLM,
    transformers.MiniMaxConfig,
    dict(
      num_hidden_layers=4,
      layer_types=["linear_attention", "full_attention"] * 2,
      sliding_window=8,
      block_size=16,
      intermediate_size=32,
      num_local_experts=8,
      num_experts_per_tok=2,
      full_attn_alpha_factor=1.7,
      full_attn_beta_factor=0.9,
      linear_attn_alpha_factor=1.3,
      linear_attn_beta_factor=1.1,
      mlp_alpha_factor=1.5,
      mlp_beta_factor=0.8,
    ),
  ),
  # QK-norm over all heads, half-rotary heads, sigmoid top-2 of 8 with the
  # correction bias, renormalised; Mixtral's hub tensor names.
  "minimax_m2": (
    transformers.MiniMaxM2ForCausalLM,
    transformers.MiniMaxM2Config,
    dict(
      num_hidden_layers=3,
      intermediate_size=32,
      num_local_experts=8,
      num_experts_per_tok=2,
      rope_parameters=dict(rope_type="default", rope_theta=10_000.0, partial_rotary_factor=0.5),
    ),
  ),
}


def _hf_config(name, **overrides):
  return hf_common.hf_config(CASES[name], **overrides)


def _build(name, directory, **overrides):
  return hf_common.build(CASES[name], directory, **overrides)


def _routers(hf_model) -> list:
  """HF's MoE routers in layer order."""
  names = ("topkrouter", "llama4router")
  return [m for m in hf_model.modules() if type(m).__name__.lower().endswith(names)]


def _routing(module, output):
  """A router's output -> (weights [t, k], indices [t, k])."""
  if isinstance(module, transformers.models.llama4.modeling_llama4.Llama4Router):
    scores, logits = output  # scores [t, E]: sigmoid of the top-k logits, 0 elsewhere.
    indices = torch.topk(logits, module.top_k, dim=-1).indices
    return scores.gather(1, indices), indices
  return output[1], output[2]  # (logits, weights, indices)


def _hf_run(hf_model, tokens):
  """-> (logits, [(router input [t, e], weights [t, k], indices [t, k]) per MoE layer])."""
  seen = []

  def hook(module, args, output):
    x = args[0].reshape(-1, args[0].shape[-1])
    weights, indices = _routing(module, output)
    seen.append((x.numpy(), weights.numpy(), indices.numpy()))

  handles = [r.register_forward_hook(hook) for r in _routers(hf_model)]
  try:
    with torch.no_grad():
      logits = hf_model(input_ids=torch.as_tensor(tokens)).logits.numpy()
  finally:
    for h in handles:
      h.remove()
  return logits, seen


def _ours(model, tokens, positions=None, segment_ids=None):
  return hf_common.ours(model, tokens, positions, segment_ids)


def _our_router(model, layer: int):
  """Our loaded router of `layer`, sliced out of the scanned stack where needed."""
  cfg = model.cfg
  if layer < cfg.prefix:
    return model.prefix[layer].mlp.router
  period, j = divmod(layer - cfg.prefix, cfg.period)
  if period >= model.num_periods:
    return model.tail[layer - cfg.prefix - model.num_periods * cfg.period].mlp.router
  graphdef, state = nnx.split(model.stack.blocks[j].mlp.router)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[period], state))


@nnx.jit
def _route(router, x):  # every layer's router has one graph: compiles once per family.
  weights, indices, _ = router(x)
  return weights, indices


def _moe_layers(model) -> list:
  return [i for i, b in enumerate(model.cfg.blocks) if hasattr(b.mlp, "num_experts")]


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
  """(family name, HF model, our (config, model)) for one case."""
  directory = tmp_path_factory.mktemp(request.param)
  model = _build(request.param, directory)
  return request.param, model, hf.load(directory)


def test_logits_match_hf(pair):
  name, hf_model, (_, model) = pair
  tokens = _tokens(2, SEQ)
  diff = np.abs(_ours(model, tokens)[0] - _hf_run(hf_model, tokens)[0]).max()
  print(f"{name}: max |logits diff| = {diff:.2e}")
  assert diff <= TOL


def test_expert_loads_match_hf_routing(pair):
  """aux["expert_load"][layer] counts the same (token, expert) picks as HF's routers."""
  _, hf_model, (_, model) = pair
  tokens = _tokens(2, SEQ, seed=1)
  _, seen = _hf_run(hf_model, tokens)
  num_experts = model.cfg.blocks[_moe_layers(model)[0]].mlp.num_experts
  theirs = np.stack([np.bincount(idx.ravel(), minlength=num_experts) for _, _, idx in seen])
  ours = np.asarray(_ours(model, tokens)[1]["expert_load"])
  assert len(seen) == len(_moe_layers(model))
  np.testing.assert_array_equal(ours, theirs)


def test_routers_pick_the_same_experts_as_hf(pair):
  """Per token and MoE layer: the same expert set, with the same weights."""
  _, hf_model, (_, model) = pair
  _, seen = _hf_run(hf_model, _tokens(2, SEQ, seed=2))
  for layer, (x, hf_weights, hf_indices) in zip(_moe_layers(model), seen, strict=True):
    weights, indices = _route(_our_router(model, layer), jnp.asarray(x))
    ours, theirs = np.argsort(np.asarray(indices), -1), np.argsort(hf_indices, -1)
    pick = lambda a, order: np.take_along_axis(np.asarray(a), order, -1)
    np.testing.assert_array_equal(pick(indices, ours), pick(hf_indices, theirs), f"layer {layer}")
    np.testing.assert_allclose(pick(weights, ours), pick(hf_weights, theirs), atol=1e-5)


def test_packed_documents_match_hf_run_separately(pair):
  """Row r holds two documents (segment ids 1 then 2, positions restarting at 0)."""
  _, hf_model, (_, model) = pair
  splits = [20, 9]
  docs = [(_tokens(1, n, seed=r), _tokens(1, SEQ - n, seed=10 + r)) for r, n in enumerate(splits)]
  packed = np.concatenate([np.concatenate(d, axis=1) for d in docs])
  segment_ids = np.array([[1] * n + [2] * (SEQ - n) for n in splits])
  positions = np.array([list(range(n)) + list(range(SEQ - n)) for n in splits])
  ours = _ours(model, packed, positions, segment_ids)[0]
  run = lambda t: _hf_run(hf_model, t)[0]
  theirs = np.concatenate([np.concatenate([run(a), run(b)], axis=1) for a, b in docs])
  assert np.abs(ours - theirs).max() <= TOL


def test_config_captures_family_features(pair):
  name, _, (config, _) = pair
  m = config.model
  expected = {
    "deepseek_v3": {
      "attention": "mla",
      "mla.q_lora_rank": 32,
      "mla.rope_interleave": True,
      "mla.mscale_all_dim": 0.5,
      "first_dense_layers": 1,
      "ffn_pattern": ("moe",),
      "moe.router": "sigmoid",
      "moe.aux_free_bias": True,
      "moe.n_group": 4,
      "moe.topk_group": 2,
      "moe.num_shared_experts": 2,
      "moe.routed_scaling": 2.5,
      "rope_scaling.type": "yarn",
    },
    "deepseek_v32": {
      "attention": "mla",
      "mla.rope_interleave": True,
      "mla.indexer.num_heads": 16,
      "mla.indexer.head_dim": 16,
      "mla.indexer.topk": 8,
      "first_dense_layers": 1,
      "ffn_pattern": ("moe",),
    },
    "glm5": {
      "attention": "mla",
      "mla.v_head_dim": 24,
      "mla.indexer.rope_interleave": True,
      "mla.indexer.topk": 8,
      "moe.n_group": 1,
      "first_dense_layers": 1,
    },
    "qwen3_next": {
      "attention_pattern": ("linear", "linear", "linear", "global"),
      "attention_gate": True,
      "norm": "rms_one_plus",
      "partial_rotary_factor": 0.25,
      "linear.num_v_heads": 4,
      "first_dense_layers": 1,
      "moe.shared_gate": True,
      "moe.shared_mlp_dim": 48,
    },
    "kimi_linear": {
      "attention": "mla",
      "attention_pattern": ("linear", "linear", "linear", "global"),
      "rope_pattern": ("nope",),
      "linear.kind": "kda",
      "linear.num_k_heads": 4,
      "linear.v_head_dim": 16,
      "mla.q_lora_rank": 0,
      "first_dense_layers": 1,
      "moe.router": "sigmoid",
      "moe.aux_free_bias": True,
      "moe.n_group": 2,
      "moe.routed_scaling": 2.446,
    },
    "qwen2_moe": {
      "qkv_bias": True,
      "out_bias": False,
      "first_dense_layers": 1,
      "ffn_pattern": ("moe",),
      "moe.router": "softmax",
      "moe.norm_topk": False,
      "moe.num_shared_experts": 1,
      "moe.shared_mlp_dim": 48,
      "moe.shared_gate": True,
    },
    "mixtral": {
      "qk_norm": "none",
      "attention_pattern": ("local",),
      "sliding_window": 8,
      "ffn_pattern": ("moe",),
      "moe.router": "softmax",
      "moe.norm_topk": True,
      "moe.aux_free_bias": False,
      "moe.num_shared_experts": 0,
      "moe.expert_mlp_dim": 32,
    },
    "qwen3_moe": {
      "qk_norm": "head",
      "first_dense_layers": 0,
      "ffn_pattern": ("dense", "moe"),
      "moe.router": "softmax",
      "moe.norm_topk": False,
      "moe.num_shared_experts": 0,
    },
    "glm4_moe": {
      "qkv_bias": True,
      "out_bias": False,
      "qk_norm": "head",
      "partial_rotary_factor": 0.5,
      "first_dense_layers": 1,
      "moe.router": "sigmoid",
      "moe.n_group": 2,
      "moe.num_shared_experts": 1,
    },
    "gpt_oss": {
      "attention_sinks": True,
      "qkv_bias": True,
      "out_bias": True,
      "attention_pattern": ("local", "global"),
      "sliding_window": 8,
      "ffn_pattern": ("moe",),
      "moe.router": "softmax_topk",
      "moe.router_bias": True,
      "moe.activation": "clamped_swiglu",
      "moe.swiglu_limit": 1.0,
      "moe.expert_bias": True,
    },
    "llama4": {
      "rope_interleave": True,
      "qk_norm": "l2_rope_layers",
      "rope_pattern": ("rope", "rope", "rope", "nope"),
      "attention_pattern": ("chunked", "chunked", "chunked", "global"),
      "attention_chunk": 8,
      "nope_temperature_scale": 0.5,
      "nope_temperature_floor": 4,
      "ffn_pattern": ("dense", "moe"),
      "mlp_dim": 96,
      "moe.expert_mlp_dim": 32,
      "moe.shared_mlp_dim": 32,
      "moe.router": "sigmoid",
      "moe.norm_topk": False,
      "moe.scale_inputs": True,
      "rope_scaling.type": "llama3",
    },
    "minimax01": {
      "norm_placement": "deepnorm",
      "attention_pattern": ("linear", "local"),
      "sliding_window": 8,
      "linear.kind": "lightning",
      "linear.num_v_heads": 4,
      "linear.v_head_dim": 16,
      "linear.chunk": 16,
      "residual_scale.attn_alpha": 1.7,
      "residual_scale.linear_beta": 1.1,
      "residual_scale.mlp_beta": 0.8,
      "ffn_pattern": ("moe",),
      "moe.router": "softmax",
      "moe.norm_topk": True,
    },
    "minimax_m2": {
      "qk_norm": "full",
      "partial_rotary_factor": 0.5,
      "ffn_pattern": ("moe",),
      "moe.router": "sigmoid",
      "moe.aux_free_bias": True,
      "moe.norm_topk": True,
      "moe.num_shared_experts": 0,
    },
  }[name]
  assert {k: _field(m, k) for k in expected} == expected


def _field(m, dotted: str):
  for key in dotted.split("."):
    m = m[key]
  return m


def _config(name, **overrides) -> dict:
  return hf_common.config_dict(CASES[name], **overrides)


@pytest.mark.parametrize(
  "overrides,first_dense,pattern",
  [
    (dict(decoder_sparse_step=1, mlp_only_layers=[0, 1]), 2, ("moe",)),
    (dict(decoder_sparse_step=2, mlp_only_layers=[]), 0, ("dense", "moe")),
    (
      dict(num_hidden_layers=6, decoder_sparse_step=3, mlp_only_layers=[]),
      0,
      ("dense",) * 2 + ("moe",),
    ),
  ],
)
def test_qwen3_moe_sparse_step_and_mlp_only_layers_give_the_ffn_pattern(
  overrides, first_dense, pattern
):
  m = hf.model_config_from_hf(_config("qwen3_moe", **overrides)).model
  assert (m.first_dense_layers, m.ffn_pattern) == (first_dense, pattern)


def test_kimi_k2_reads_as_deepseek_v3():
  config = _config("deepseek_v3")
  kimi = hf.model_config_from_hf(dict(config, model_type="kimi_k2")).model
  deepseek = hf.model_config_from_hf(config).model
  assert kimi.family == "kimi_k2"
  with kimi.unlocked():
    kimi.family = deepseek.family
  assert kimi == deepseek


def test_legacy_deepseek_rope_scaling_gives_the_same_config():
  """Hub DeepSeek/Kimi config.json files carry rope_theta + rope_scaling{type: yarn, ...}."""
  config = _config("deepseek_v3")
  legacy = {k: v for k, v in config.items() if k != "rope_parameters"}
  rope = dict(config["rope_parameters"])
  legacy.update(
    rope_theta=rope.pop("rope_theta"), rope_scaling=dict(rope, type=rope.pop("rope_type"))
  )
  assert hf.model_config_from_hf(legacy) == hf.model_config_from_hf(config)


def test_deepseek_without_q_lora_uses_a_plain_query_projection():
  m = hf.model_config_from_hf(_config("deepseek_v3", q_lora_rank=None)).model
  assert m.mla.q_lora_rank == 0


def test_gpt_oss_default_yarn_is_untruncated():
  """Released gpt-oss configs use YaRN with truncate=False; the loader keeps it."""
  config = _config("gpt_oss", rope_parameters=None)
  assert config["rope_parameters"]["truncate"] is False
  assert hf.model_config_from_hf(config).model.rope_scaling.truncate is False


@pytest.mark.parametrize(
  "name,key,value",
  [
    ("gpt_oss", "swiglu_alpha", 1.0),
    ("minimax_m2", "scoring_func", "softmax"),
    ("deepseek_v3", "attention_bias", True),
    ("deepseek_v3", "scoring_func", "softmax"),
    ("qwen3_moe", "hidden_act", "gelu_pytorch_tanh"),
    ("glm5", "indexer_rope_interleave", False),
  ],
)
def test_unrepresentable_fields_are_named(name, key, value):
  with pytest.raises(ValueError, match=f"{key}={value!r} is not supported"):
    hf.model_config_from_hf(dict(_config(name), **{key: value}))


def test_glm5_hub_config_reads_as_the_saved_one_and_shared_indexers_are_named():
  """Hub files give the indexer schedule as `index_topk_freq` / `index_skip_topk_offset`
  (GLM-5.2: every 4th layer from layer 3 runs its indexer, the rest reuse its top-k)
  where save_pretrained writes `indexer_types`. Every-layer schedules load alike;
  shared layers are named as unsupported before anything is built."""
  saved = _config("glm5")
  hub = {k: v for k, v in saved.items() if k != "indexer_types"}
  assert saved["indexer_types"] == ["full"] * 3
  for config in (hub, dict(hub, index_topk_freq=1), dict(hub, index_topk_pattern="FFF")):
    assert hf.model_config_from_hf(config).model == hf.model_config_from_hf(saved).model
  for config in (
    dict(saved, indexer_types=["full", "shared", "full"]),
    dict(hub, index_topk_freq=4, index_skip_topk_offset=1),
    dict(hub, index_topk_pattern="FSF"),
  ):
    with pytest.raises(ValueError, match="indexer_types \\['full', 'shared'\\] is not supported"):
      hf.model_config_from_hf(config)


def test_quantized_checkpoints_are_rejected():
  config = dict(_config("gpt_oss"), quantization_config={"quant_method": "mxfp4"})
  with pytest.raises(ValueError, match="quantization_config \\(quant_method='mxfp4'\\)"):
    hf.model_config_from_hf(config)


def _with_extra_layer_tensor(tmp_path, layer_past_last: int):
  _build("deepseek_v3", tmp_path, num_hidden_layers=2)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["num_nextn_predict_layers"] == 1
  name = f"model.layers.{config['num_hidden_layers'] + layer_past_last}.eh_proj.weight"
  safetensors.numpy.save_file({name: np.ones((2, 2), np.float32)}, tmp_path / "mtp.safetensors")
  return name


def test_multi_token_prediction_layers_are_ignored(tmp_path):
  """DeepSeek / GLM checkpoints store num_nextn_predict_layers MTP modules after the last layer."""
  _with_extra_layer_tensor(tmp_path, 0)
  _, model = hf.load(tmp_path)
  assert np.asarray(model.prefix[0].attn.kv_b_proj[...]).any()


def test_qwen3_next_mtp_block_is_ignored(tmp_path):
  """Hub Qwen3-Next files hold an `mtp.` block (a layer, fc and norms) that we do not load."""
  _build("qwen3_next", tmp_path)
  tensors = {
    "mtp.fc.weight": np.ones((2, 2), np.float32),
    "mtp.norm.weight": np.ones(2, np.float32),
  }
  safetensors.numpy.save_file(tensors, tmp_path / "mtp.safetensors")
  _, model = hf.load(tmp_path)
  assert model.cfg.num_layers == 4


def test_layers_past_the_mtp_modules_are_unexpected(tmp_path):
  name = _with_extra_layer_tensor(tmp_path, 1)
  with pytest.raises(ValueError, match=f"unexpected \\['{name}'\\]"):
    hf.load(tmp_path)


def test_llama4_multimodal_checkpoint_loads_its_language_model(tmp_path):
  """Hub Llama 4 files are Llama4ForConditionalGeneration: the text model's config
  is `text_config`, its tensors sit under `language_model.`, the vision tower is skipped."""
  torch.manual_seed(0)
  vision = transformers.Llama4VisionConfig(
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    vision_output_dim=16,
    projector_input_dim=16,
    projector_output_dim=16,
    image_size=28,
    patch_size=14,
  )
  text = _hf_config("llama4", num_hidden_layers=4).to_dict()
  config = transformers.Llama4Config(text_config=text, vision_config=vision.to_dict())
  model = transformers.Llama4ForConditionalGeneration(config).eval().float()
  hf_common.randomise(model)
  model.save_pretrained(tmp_path)
  _, ours = hf.load(tmp_path)
  tokens = _tokens(2, SEQ)
  with torch.no_grad():
    theirs = model.language_model(input_ids=torch.as_tensor(tokens)).logits.numpy()
  assert np.abs(_ours(ours, tokens)[0] - theirs).max() <= TOL


def test_kimi_linear_hub_config_reads_as_the_saved_one():
  """Hub Kimi Linear files nest the KDA sizes and 1-based MLA layers in
  `linear_attn_config`; transformers' save_pretrained writes flat keys."""
  saved = _config("kimi_linear")
  flat = ("layer_types", "linear_num_heads", "linear_head_dim", "linear_conv_kernel_dim")
  hub = {k: v for k, v in saved.items() if k not in flat}
  hub["linear_attn_config"] = dict(
    full_attn_layers=[4], kda_layers=[1, 2, 3], num_heads=4, head_dim=16, short_conv_kernel_size=4
  )
  assert hf.model_config_from_hf(hub).model == hf.model_config_from_hf(saved).model
