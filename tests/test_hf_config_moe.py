"""Specs for modeling/hf reading MoE families' config.json files: layer patterns,
aliases, legacy formats, rejected values, and tensors the loader ignores."""

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
from tests.hf_moe_cases import CASES


def _hf_config(name, **overrides):
  return hf_common.hf_config(CASES[name], **overrides)


def _build(name, directory, **overrides):
  return hf_common.build(CASES[name], directory, **overrides)


def _ours(model, tokens, positions=None, segment_ids=None):
  return hf_common.ours(model, tokens, positions, segment_ids)


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


def test_a_multi_token_prediction_layer_held_in_part_is_named(tmp_path):
  """DeepSeek / GLM checkpoints store num_nextn_predict_layers MTP modules after the
  last layer: loaded whole (tests/test_hf_export.py), or an error naming the
  tensors that are missing; one saved by transformers has none (and loads without)."""
  _build("deepseek_v3", tmp_path / "plain", num_hidden_layers=2)
  config, model = hf.load(tmp_path / "plain")
  assert config.model.mtp.depth == 0 and np.asarray(model.prefix[0].attn.kv_b_proj[...]).any()
  _with_extra_layer_tensor(tmp_path, 0)
  with pytest.raises(ValueError, match=r"missing \['model.layers.2.enorm.weight'"):
    hf.load(tmp_path)


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
