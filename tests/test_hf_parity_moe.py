"""Specs for modeling/hf on MoE families: tiny random HF models load, match HF
logits and route every token to the same experts.

As in test_hf_parity.py, ALL weights are random (norm scales, biases, sinks and
DeepSeek's e_score_correction_bias too). Routing is checked two ways: our
per-layer expert loads (every MoE layer's `load` stat) against counts of the experts HF's
routers picked, and our loaded routers, fed the exact hidden states HF's
routers saw (forward hooks), against HF's per-token choices and weights.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from modeling import hf
from modeling.decoder import by_layer
from tests import hf_common
from tests.hf_common import SEQ, TOL
from tests.hf_common import tokens as _tokens
from tests.hf_moe_cases import CASES


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
  """Each MoE layer's `load` counts the same (token, expert) picks as HF's routers."""
  _, hf_model, (_, model) = pair
  tokens = _tokens(2, SEQ, seed=1)
  _, seen = _hf_run(hf_model, tokens)
  num_experts = model.cfg.blocks[_moe_layers(model)[0]].mlp.num_experts
  theirs = np.stack([np.bincount(idx.ravel(), minlength=num_experts) for _, _, idx in seen])
  ours = np.asarray(by_layer(model.cfg, _ours(model, tokens)[1], "mlp", "load"))
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
