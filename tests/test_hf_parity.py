"""Specs for modeling/hf: tiny random HF models load and match HF logits.

Every case builds a tiny `transformers` model with ALL weights randomised
(norm scales and biases too, so a wrong mapping cannot hide behind 1s and 0s),
saves it, loads it through `modeling.hf.load` and compares float32 logits.
"""

import json

import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from modeling import hf
from tests import hf_common
from tests.hf_common import SEQ, TOL
from tests.hf_common import tokens as _tokens

# name -> (HF model class, HF config class, config kwargs). Each case also
# switches on the features its family is known for.
CASES = {
  # Llama 3 RoPE scaling (factor 8 over a 16-token pretraining context), biases,
  # 3 scanned layers.
  "llama": (
    transformers.LlamaForCausalLM,
    transformers.LlamaConfig,
    dict(
      num_hidden_layers=3,
      attention_bias=True,
      mlp_bias=True,
      rope_parameters=dict(
        rope_type="llama3",
        rope_theta=500_000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=16,
      ),
    ),
  ),
  # YaRN (factor 4 over a 16-token context), per-head QK-norm, tied embeddings.
  "qwen3": (
    transformers.Qwen3ForCausalLM,
    transformers.Qwen3Config,
    dict(
      num_hidden_layers=2,
      tie_word_embeddings=True,
      max_position_embeddings=64,
      rope_parameters=dict(
        rope_type="yarn", rope_theta=1_000_000.0, factor=4.0, original_max_position_embeddings=16
      ),
    ),
  ),
  # Gemma 3n: 8 layers alternating local (window 8) / global; sparse gates on layers
  # 0-1, FFN widths 96 / 64 per layer (MatFormer), layers 2-3 store K/V that 4-7
  # reuse (two identical periods: scanned); AltUp over 4 streams, LAuReL rank 8,
  # PLE 8 wide from a 100-row table (ids 100-127 read row 0).
  "gemma3n": (
    transformers.Gemma3nForCausalLM,
    transformers.Gemma3nTextConfig,
    dict(
      num_hidden_layers=8,
      layer_types=["sliding_attention", "full_attention"] * 4,
      sliding_window=8,
      intermediate_size=[96, 96, 64, 64, 96, 96, 96, 96],
      activation_sparsity_pattern=[0.95, 0.95] + [0.0] * 6,
      num_kv_shared_layers=4,
      altup_num_inputs=4,
      laurel_rank=8,
      hidden_size_per_layer_input=8,
      vocab_size_per_layer_input=100,
      rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
      },
    ),
  ),
  # 2 local : 1 global over 5 layers (1 scanned period + 2 tail layers), window 8,
  # linear scaling on global layers only, soft-capping, query_pre_attn_scalar != head_dim.
  "gemma3": (
    transformers.Gemma3ForCausalLM,
    transformers.Gemma3TextConfig,
    dict(
      num_hidden_layers=5,
      sliding_window=8,
      query_pre_attn_scalar=24,
      layer_types=[
        "sliding_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "sliding_attention",
      ],
      final_logit_softcapping=2.0,
      attn_logit_softcapping=5.0,
      rope_parameters={
        "full_attention": dict(rope_type="linear", factor=4.0, rope_theta=1_000_000.0),
        "sliding_attention": dict(rope_type="default", rope_theta=10_000.0),
      },
    ),
  ),
  # Post-norm and QK-norm over all heads at once.
  "olmo2": (
    transformers.Olmo2ForCausalLM,
    transformers.Olmo2Config,
    dict(num_hidden_layers=2, rope_parameters=dict(rope_type="default", rope_theta=500_000.0)),
  ),
  # Post-norm, QK-norm, windows of 8 on 3 of 4 layers, YaRN (factor 4 over a 16-token
  # context) on the full-attention layer only.
  "olmo3": (
    transformers.Olmo3ForCausalLM,
    transformers.Olmo3Config,
    dict(
      num_hidden_layers=4,
      sliding_window=8,
      max_position_embeddings=64,
      rope_parameters={
        "full_attention": dict(
          rope_type="yarn", rope_theta=500_000.0, factor=4.0, original_max_position_embeddings=16
        ),
        "sliding_attention": dict(rope_type="default", rope_theta=500_000.0),
      },
    ),
  ),
  # NoPE on every 2nd layer: pattern (rope, nope) scanned twice.
  "smollm3": (
    transformers.SmolLM3ForCausalLM,
    transformers.SmolLM3Config,
    dict(num_hidden_layers=4, no_rope_layer_interval=2),
  ),
  # Bias on q/k/v but not o, YaRN (factor 4 over a 16-token context), a window of 8
  # on the layers past max_window_layers (pattern global, local, local).
  "qwen2": (
    transformers.Qwen2ForCausalLM,
    transformers.Qwen2Config,
    dict(
      num_hidden_layers=3,
      use_sliding_window=True,
      sliding_window=8,
      max_window_layers=1,
      max_position_embeddings=64,
      rope_parameters=dict(
        rope_type="yarn", rope_theta=1_000_000.0, factor=4.0, original_max_position_embeddings=16
      ),
    ),
  ),
  # Sliding window on every layer.
  "mistral": (
    transformers.MistralForCausalLM,
    transformers.MistralConfig,
    dict(num_hidden_layers=2, sliding_window=8),
  ),
}


def _build(name, directory, **overrides):
  return hf_common.build(CASES[name], directory, **overrides)


def _build_config(name, **overrides) -> dict:
  return hf_common.config_dict(CASES[name], **overrides)


def _hf_logits(model, tokens) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.as_tensor(tokens)).logits.numpy()


def _our_logits(model, tokens, positions=None, segment_ids=None) -> np.ndarray:
  return hf_common.ours(model, tokens, positions, segment_ids)[0]


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
  """(family name, HF model, our (config, model)) for one case."""
  directory = tmp_path_factory.mktemp(request.param)
  model = _build(request.param, directory)
  return request.param, model, hf.load(directory)


def test_logits_match_hf(pair):
  name, hf_model, (_, model) = pair
  tokens = _tokens(2, SEQ)
  diff = np.abs(_our_logits(model, tokens) - _hf_logits(hf_model, tokens)).max()
  print(f"{name}: max |logits diff| = {diff:.2e}")
  assert diff <= TOL


def test_packed_documents_match_hf_run_separately(pair):
  """Row r holds two documents (segment ids 1 then 2, positions restarting at 0)."""
  _, hf_model, (_, model) = pair
  splits = [20, 9]
  docs = [(_tokens(1, n, seed=r), _tokens(1, SEQ - n, seed=10 + r)) for r, n in enumerate(splits)]
  packed = np.concatenate([np.concatenate(d, axis=1) for d in docs])
  segment_ids = np.array([[1] * n + [2] * (SEQ - n) for n in splits])
  positions = np.array([list(range(n)) + list(range(SEQ - n)) for n in splits])
  ours = _our_logits(model, packed, positions, segment_ids)
  theirs = np.concatenate(
    [np.concatenate([_hf_logits(hf_model, a), _hf_logits(hf_model, b)], axis=1) for a, b in docs]
  )
  assert np.abs(ours - theirs).max() <= TOL


@pytest.mark.parametrize("pair", ["gemma3", "gemma3n", "mistral", "qwen2", "olmo3"], indirect=True)
def test_sliding_window_matches_hf_past_the_window(pair):
  _, hf_model, (config, model) = pair
  assert config.model.sliding_window == 8  # SEQ = 32 tokens span four windows.
  tokens = _tokens(2, SEQ, seed=3)
  assert np.abs(_our_logits(model, tokens) - _hf_logits(hf_model, tokens)).max() <= TOL


def test_config_captures_family_features(pair):
  name, _, (config, _) = pair
  m = config.model
  expected = {
    "llama": dict(
      family="llama3", qkv_bias=True, out_bias=True, mlp_bias=True, num_kv_heads=2, head_dim=16
    ),
    "qwen3": dict(family="qwen3", qk_norm="head", tie_embeddings=True),
    "gemma3": dict(
      family="gemma3",
      norm="rms_one_plus",
      norm_placement="sandwich",
      activation="gelu_tanh",
      embed_scale=True,
      query_pre_attn_scalar=24.0,
      attention_pattern=("local", "local", "global"),
      sliding_window=8,
      local_rope_theta=10_000.0,
      rope_theta=1_000_000.0,
      final_logit_softcap=2.0,
      attn_logit_softcap=0.0,
    ),
    "gemma3n": dict(
      family="gemma3n",
      attention_pattern=("local", "global"),
      sliding_window=8,
      v_norm=True,
      query_pre_attn_scalar=1.0,
      mlp_dim=96,
      mlp_dims=(96, 96, 64, 64, 96, 96, 96, 96),
      activation_sparsity=(0.95, 0.95),
      kv_shared_layers=4,
      final_logit_softcap=30.0,
      tie_embeddings=True,
    ),
    "olmo2": dict(family="olmo2", norm_placement="post", qk_norm="full", rope_theta=500_000.0),
    "smollm3": dict(family="smollm3", rope_pattern=("rope", "nope"), tie_embeddings=True),
    "mistral": dict(family="mistral", attention_pattern=("local",), sliding_window=8),
    "olmo3": dict(
      family="olmo3",
      norm_placement="post",
      qk_norm="full",
      attention_pattern=("local", "local", "local", "global"),
      sliding_window=8,
      rope_theta=500_000.0,
      local_rope_theta=500_000.0,
    ),
    "qwen2": dict(
      family="qwen2",
      qkv_bias=True,
      out_bias=False,
      qk_norm="none",
      attention_pattern=("global", "local", "local"),
      sliding_window=8,
    ),
  }[name]
  assert {k: m[k] for k in expected} == expected


def test_rope_scaling_fields_are_read():
  llama = hf.model_config_from_hf(_build_config("llama")).model.rope_scaling
  assert (llama.type, llama.factor, llama.original_max_position) == ("llama3", 8.0, 16)
  qwen = hf.model_config_from_hf(_build_config("qwen3")).model.rope_scaling
  assert (qwen.type, qwen.factor, qwen.original_max_position) == ("yarn", 4.0, 16)
  assert qwen.attention_factor == pytest.approx(0.1 * np.log(4.0) + 1)
  gemma = hf.model_config_from_hf(_build_config("gemma3")).model.rope_scaling
  assert (gemma.type, gemma.factor) == ("linear", 4.0)


def test_legacy_rope_keys_give_the_same_config():
  """Pre-`rope_parameters` config.json files (most Hub checkpoints) read the same."""
  gemma = _build_config("gemma3")
  legacy = {k: v for k, v in gemma.items() if k not in ("rope_parameters", "layer_types")}
  legacy.update(
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
    sliding_window_pattern=3,
    rope_scaling=dict(rope_type="linear", factor=4.0),
  )
  assert hf.model_config_from_hf(legacy) == hf.model_config_from_hf(gemma)
  llama = _build_config("llama")
  legacy = {k: v for k, v in llama.items() if k != "rope_parameters"}
  rope = dict(llama["rope_parameters"])
  legacy.update(
    rope_theta=rope.pop("rope_theta"), rope_scaling=dict(rope, type=rope.pop("rope_type"))
  )
  assert hf.model_config_from_hf(legacy) == hf.model_config_from_hf(llama)


def test_hf_gemma3_ignores_attn_logit_softcapping(tmp_path):
  """Why the loader leaves attn_logit_softcap off: HF's Gemma3 never applies it."""
  tokens = _tokens(1, 16)
  with_cap = _hf_logits(_build("gemma3", tmp_path / "a", attn_logit_softcapping=0.5), tokens)
  without = _hf_logits(_build("gemma3", tmp_path / "b", attn_logit_softcapping=None), tokens)
  np.testing.assert_array_equal(with_cap, without)


def test_sharded_checkpoint_loads(tmp_path):
  hf_model = _build("mistral", tmp_path, num_hidden_layers=1)
  hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  _, model = hf.load(tmp_path)
  tokens = _tokens(2, SEQ)
  assert np.abs(_our_logits(model, tokens) - _hf_logits(hf_model, tokens)).max() <= TOL


def test_bfloat16_checkpoint_loads(tmp_path):
  hf_model = _build("llama", tmp_path, num_hidden_layers=1)
  hf_model.to(torch.bfloat16).save_pretrained(tmp_path)
  _, model = hf.load(tmp_path)
  ours = np.asarray(model.embed[...])
  theirs = hf_model.model.embed_tokens.weight.float().detach().numpy()
  np.testing.assert_array_equal(ours, theirs)


def test_unknown_model_type_lists_supported():
  with pytest.raises(ValueError, match="model_type='gpt2' is not supported; supported: llama"):
    hf.model_config_from_hf({"model_type": "gpt2"})


def test_unsupported_rope_type_is_named():
  config = _build_config("llama", rope_parameters=dict(rope_type="dynamic", factor=2.0))
  with pytest.raises(ValueError, match="rope_type='dynamic'"):
    hf.model_config_from_hf(config)


def test_missing_tensors_are_listed(tmp_path):
  _build("mistral", tmp_path, num_hidden_layers=1)
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
  with pytest.raises(ValueError, match=r"missing \['model.layers.1.input_layernorm.weight'"):
    hf.load(tmp_path)


def test_unexpected_tensors_are_listed(tmp_path):
  _build("mistral", tmp_path, num_hidden_layers=1)
  safetensors.numpy.save_file(
    {"model.extra.weight": np.ones(2, np.float32)}, tmp_path / "extra.safetensors"
  )
  with pytest.raises(ValueError, match=r"missing none; unexpected \['model.extra.weight'\]"):
    hf.load(tmp_path)
