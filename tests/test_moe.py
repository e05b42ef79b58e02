"""Specs for modeling/moe: dispatch equivalences, capacity dropping, HF router and block parity.

HF modules are built standalone with tiny configs; every weight (biases and the
DeepSeek e_score_correction_bias too) is random and copied across.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_dsv3
from transformers.models.gpt_oss import modeling_gpt_oss as hf_oss
from transformers.models.llama4 import modeling_llama4 as hf_llama4
from transformers.models.mixtral import modeling_mixtral as hf_mixtral
from transformers.models.qwen3_moe import modeling_qwen3_moe as hf_qwen3

from modeling.moe import Experts, MoE, Router, RouterBias, validate
from modeling.moe.config import MoeConfig
from tests.conftest import random_module

E_DIM, T = 16, 32
BASE = MoeConfig(embed_dim=E_DIM, num_experts=8, top_k=2, expert_mlp_dim=12)
DSV3 = dataclasses.replace(
  BASE,
  num_experts=16,
  top_k=4,
  router="sigmoid",
  n_group=4,
  topk_group=2,
  routed_scaling=2.5,
  aux_free_bias=True,
  num_shared_experts=1,
  shared_mlp_dim=12,
)
QWEN3 = dataclasses.replace(BASE, router="softmax", norm_topk=True)
GPT_OSS = dataclasses.replace(
  BASE,
  router="softmax_topk",
  router_bias=True,
  expert_bias=True,
  activation="clamped_swiglu",
  swiglu_limit=1.5,  # low, so the clamps bite.
)


def _moe(cfg, seed=0):
  return random_module(MoE, cfg, seed)


@nnx.jit
def _call(module, *args):
  return module(*args)


@nnx.jit
def _grad(moe, x):
  return nnx.grad(lambda m: jnp.sum(m(x)[0] ** 2))(moe)


def _x(shape, seed=7, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _t(a):
  return torch.from_numpy(np.array(a, np.float32))


def _hf_config(cls, cfg: MoeConfig, **kw):
  return cls(
    hidden_size=cfg.embed_dim, num_experts_per_tok=cfg.top_k, experts_implementation="eager", **kw
  )


def _sorted_routing(weights, indices):
  """Routing as (indices, weights) sorted by expert id per token: HF may not sort its top-k."""
  weights, indices = np.asarray(weights), np.asarray(indices)
  order = np.argsort(indices, axis=-1)
  return np.take_along_axis(indices, order, -1), np.take_along_axis(weights, order, -1)


def _dense_reference(experts: Experts, x, weights, indices):
  """Every expert on every token, then combine the k chosen with the router weights."""
  cfg, p = experts.cfg, nnx.state(experts, nnx.Param)
  gate = jnp.einsum("te,xef->txf", x, p["gate_proj"][...])
  up = jnp.einsum("te,xef->txf", x, p["up_proj"][...])
  if cfg.expert_bias:
    gate, up = gate + p["gate_bias"][...], up + p["up_bias"][...]
  if cfg.activation == "silu":
    h = jax.nn.silu(gate) * up
  else:
    lim = cfg.swiglu_limit
    g = jnp.minimum(gate, lim)
    h = (jnp.clip(up, -lim, lim) + 1) * g * jax.nn.sigmoid(1.702 * g)
  out = jnp.einsum("txf,xfe->txe", h, p["down_proj"][...])
  if cfg.expert_bias:
    out = out + p["down_bias"][...]
  chosen = jnp.take_along_axis(out, indices[:, :, None], axis=1)  # [t, k, e]
  return jnp.einsum("tke,tk->te", chosen, weights)


# --- dispatch ---------------------------------------------------------------


@pytest.mark.parametrize("cfg", [QWEN3, GPT_OSS], ids=["silu", "clamped_swiglu_bias"])
def test_dropless_dispatch_equals_dense_reference(cfg):
  moe, x = _moe(cfg), _x((T, E_DIM), scale=2.0)
  weights, indices, _ = _call(moe.router, x)
  y, dropped = _call(moe.experts, x, weights, indices)
  np.testing.assert_allclose(y, _dense_reference(moe.experts, x, weights, indices), atol=1e-5)
  assert float(dropped) == 0.0


def test_capacity_with_huge_factor_equals_dropless():
  cfg = dataclasses.replace(GPT_OSS, dispatch="capacity", capacity_factor=8.0)
  moe, x = _moe(cfg), _x((T, E_DIM))
  weights, indices, _ = _call(moe.router, x)
  y, dropped = _call(moe.experts, x, weights, indices)
  moe.experts.cfg = dataclasses.replace(cfg, dispatch="dropless")
  np.testing.assert_allclose(y, _call(moe.experts, x, weights, indices)[0], atol=1e-5)
  assert float(dropped) == 0.0


def test_capacity_drops_pairs_past_capacity_in_token_order():
  # E=2, k=2, t=3, factor 0.5: C = ceil(0.5*3*2/2) = 2. Expert 0 receives pairs
  # (t0,s0), (t1,s1), (t2,s0); expert 1 (t0,s1), (t1,s0), (t2,s1): both drop token 2.
  cfg = dataclasses.replace(BASE, num_experts=2, dispatch="capacity", capacity_factor=0.5)
  experts = random_module(Experts, cfg)
  x, weights = _x((3, E_DIM)), jnp.array([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5]])
  indices = jnp.array([[0, 1], [1, 0], [0, 1]], jnp.int32)
  assert experts.capacity(3) == 2
  y, dropped = _call(experts, x, weights, indices)
  full = _dense_reference(experts, x, weights, indices)
  np.testing.assert_allclose(y[:2], full[:2], atol=1e-5)
  np.testing.assert_array_equal(y[2], 0.0)
  np.testing.assert_allclose(dropped, 2 / 6, rtol=1e-6)


def test_capacity_drops_only_the_late_slot_of_a_token():
  # E=2, k=1, t=4, factor 0.5: C = 1. Expert 0 gets t0, t1, t3 (keeps t0); expert 1 gets t2.
  cfg = dataclasses.replace(BASE, num_experts=2, top_k=1, dispatch="capacity", capacity_factor=0.5)
  experts = random_module(Experts, cfg)
  x, weights = _x((4, E_DIM)), jnp.ones((4, 1))
  indices = jnp.array([[0], [0], [1], [0]], jnp.int32)
  y, dropped = _call(experts, x, weights, indices)
  full = _dense_reference(experts, x, weights, indices)
  np.testing.assert_allclose(y[jnp.array([0, 2])], full[jnp.array([0, 2])], atol=1e-5)
  np.testing.assert_array_equal(y[jnp.array([1, 3])], 0.0)
  np.testing.assert_allclose(dropped, 0.5)


# --- routers vs HF ----------------------------------------------------------


def _router_parity(cfg, hf_router, ours_out, tol=1e-6):
  x = _x((T, E_DIM), seed=3)
  router = random_module(Router, cfg, std=1.0)
  hf_router.weight.data = _t(router.kernel[...].T)
  if cfg.router_bias:
    hf_router.bias.data = _t(router.bias[...])
  if cfg.aux_free_bias:
    # Mostly negative, so s + b < 0 in kept groups: filling masked groups with 0
    # instead of -inf would change 14 of the 32 tokens' experts.
    bias = _x((cfg.num_experts,), seed=5) - 1.0
    router.aux_free_bias[...] = bias
    hf_router.e_score_correction_bias.data = _t(bias)
  with torch.no_grad():
    hf_w, hf_i = ours_out(hf_router(_t(x)))
  w, i, _ = _call(router, x)
  i, w = _sorted_routing(w, i)
  hf_i, hf_w = _sorted_routing(hf_w, hf_i)
  np.testing.assert_array_equal(i, hf_i)
  np.testing.assert_allclose(w, hf_w, atol=tol, rtol=tol)


def test_router_matches_hf_deepseek_v3_group_limited():
  cfg = dataclasses.replace(DSV3, num_shared_experts=0, shared_mlp_dim=0)
  hf_cfg = _hf_config(
    transformers.DeepseekV3Config,
    cfg,
    n_routed_experts=16,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
  )
  _router_parity(cfg, hf_dsv3.DeepseekV3TopkRouter(hf_cfg), lambda o: (o[1], o[2]))


@pytest.mark.parametrize("norm", [True, False])
def test_router_matches_hf_qwen3_moe(norm):
  cfg = dataclasses.replace(QWEN3, norm_topk=norm)
  hf_cfg = _hf_config(transformers.Qwen3MoeConfig, cfg, num_experts=8, norm_topk_prob=norm)
  _router_parity(cfg, hf_qwen3.Qwen3MoeTopKRouter(hf_cfg), lambda o: (o[1], o[2]))


def test_router_matches_hf_mixtral():
  hf_cfg = _hf_config(transformers.MixtralConfig, QWEN3, num_local_experts=8)
  _router_parity(QWEN3, hf_mixtral.MixtralTopKRouter(hf_cfg), lambda o: (o[1], o[2]))


def test_router_matches_hf_gpt_oss_with_bias():
  hf_cfg = _hf_config(transformers.GptOssConfig, GPT_OSS, num_local_experts=8)
  _router_parity(GPT_OSS, hf_oss.GptOssTopKRouter(hf_cfg), lambda o: (o[1], o[2]))


def test_router_matches_hf_llama4_top1_sigmoid():
  cfg = dataclasses.replace(BASE, top_k=1, router="sigmoid", norm_topk=False)
  hf_cfg = _hf_config(transformers.Llama4TextConfig, cfg, num_local_experts=8)

  def selected(out):  # dense [t, E] scores, sigmoid(-inf) = 0 off the top-1.
    scores = out[0]
    idx = torch.argmax(out[1], dim=-1, keepdim=True)
    return scores.gather(1, idx), idx

  _router_parity(cfg, hf_llama4.Llama4Router(hf_cfg), selected)


# --- whole blocks vs HF -----------------------------------------------------


def _expert_weights(moe):
  p = nnx.state(moe.experts, nnx.Param)
  return {k: np.asarray(v[...]) for k, v in p.items()}


def _load_chunked(hf_experts, moe):
  w = _expert_weights(moe)  # gate_up [E, 2f, e] = [gate; up]
  gate_up = np.concatenate([w["gate_proj"], w["up_proj"]], axis=-1).transpose(0, 2, 1)
  hf_experts.gate_up_proj.data = _t(gate_up)
  hf_experts.down_proj.data = _t(w["down_proj"].transpose(0, 2, 1))


def _load_interleaved(hf_experts, moe):
  w = _expert_weights(moe)  # gate_up [E, e, 2f]: gate even columns, up odd.
  gate_up = np.stack([w["gate_proj"], w["up_proj"]], axis=-1).reshape(*w["gate_proj"].shape[:2], -1)
  gate_up_bias = np.stack([w["gate_bias"], w["up_bias"]], axis=-1).reshape(
    w["gate_bias"].shape[0], -1
  )
  hf_experts.gate_up_proj.data, hf_experts.gate_up_proj_bias.data = _t(gate_up), _t(gate_up_bias)
  hf_experts.down_proj.data, hf_experts.down_proj_bias.data = _t(w["down_proj"]), _t(w["down_bias"])


def _block_parity(moe, hf_block, x):
  with torch.no_grad():
    hf_y = hf_block(_t(x))
  hf_y = hf_y[0] if isinstance(hf_y, tuple) else hf_y
  y, _ = _call(moe, x)
  np.testing.assert_allclose(y, hf_y.numpy(), atol=1e-5, rtol=1e-5)


DISPATCH = pytest.mark.parametrize(
  "dispatch",
  [dict(dispatch="dropless"), dict(dispatch="capacity", capacity_factor=8.0)],
  ids=["dropless", "capacity"],
)


@DISPATCH
def test_moe_matches_hf_deepseek_v3_moe(dispatch):
  moe = _moe(dataclasses.replace(DSV3, **dispatch))
  moe.router.aux_free_bias[...] = _x((16,), seed=5) - 1.0
  hf_cfg = _hf_config(
    transformers.DeepseekV3Config,
    DSV3,
    n_routed_experts=16,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
    moe_intermediate_size=12,
    n_shared_experts=1,
  )
  hf = hf_dsv3.DeepseekV3MoE(hf_cfg)
  hf.gate.weight.data = _t(moe.router.kernel[...].T)
  hf.gate.e_score_correction_bias.data = _t(moe.router.aux_free_bias[...])
  _load_chunked(hf.experts, moe)
  for name in ("gate_proj", "up_proj", "down_proj"):
    getattr(hf.shared_experts, name).weight.data = _t(getattr(moe.shared, name)[...].T)
  _block_parity(moe, hf, _x((2, 16, E_DIM)))


@DISPATCH
def test_moe_matches_hf_qwen3_sparse_moe_block(dispatch):
  moe = _moe(dataclasses.replace(QWEN3, **dispatch))
  hf_cfg = _hf_config(
    transformers.Qwen3MoeConfig, QWEN3, num_experts=8, moe_intermediate_size=12, norm_topk_prob=True
  )
  hf = hf_qwen3.Qwen3MoeSparseMoeBlock(hf_cfg)
  hf.gate.weight.data = _t(moe.router.kernel[...].T)
  _load_chunked(hf.experts, moe)
  _block_parity(moe, hf, _x((2, 16, E_DIM)))


@DISPATCH
def test_moe_matches_hf_gpt_oss_mlp(dispatch):
  moe = _moe(dataclasses.replace(GPT_OSS, **dispatch))
  hf_cfg = _hf_config(
    transformers.GptOssConfig, GPT_OSS, num_local_experts=8, intermediate_size=12, swiglu_limit=1.5
  )
  hf = hf_oss.GptOssMLP(hf_cfg)
  hf.router.weight.data, hf.router.bias.data = (
    _t(moe.router.kernel[...].T),
    _t(moe.router.bias[...]),
  )
  _load_interleaved(hf.experts, moe)
  _block_parity(moe, hf, _x((2, 16, E_DIM), scale=2.0))


# --- aux-free bias, stats, validation, transforms ---------------------------


def test_aux_free_bias_changes_selection_not_the_weights_source():
  cfg = dataclasses.replace(DSV3, n_group=1, topk_group=1, shared_mlp_dim=0, num_shared_experts=0)
  router, x = random_module(Router, cfg), _x((T, E_DIM))
  _, before, _ = _call(router, x)
  router.aux_free_bias[...] = jnp.zeros(16).at[3].set(10.0)
  weights, indices, _ = _call(router, x)
  assert not np.array_equal(before, indices)
  assert (np.asarray(indices) == 3).any(-1).all()
  s = jnp.take_along_axis(jax.nn.sigmoid(router.logits(x)), indices, -1)
  np.testing.assert_allclose(weights, 2.5 * s / s.sum(-1, keepdims=True), rtol=1e-6)


def test_router_bias_is_state_not_a_param():
  moe = _moe(DSV3)
  assert "aux_free_bias" not in nnx.state(moe, nnx.Param)["router"]
  assert isinstance(nnx.state(moe, RouterBias)["router"]["aux_free_bias"], RouterBias)
  grads = _grad(moe, _x((2, 8, E_DIM)))
  assert "aux_free_bias" not in grads["router"]


def test_stats_match_their_definitions():
  moe, x = _moe(QWEN3), _x((2, 16, E_DIM))
  _, stats = _call(moe, x)
  logits = moe.router.logits(x.reshape(-1, E_DIM))
  _, indices, _ = _call(moe.router, x.reshape(-1, E_DIM))
  probs, mask = jax.nn.softmax(logits), jax.nn.one_hot(indices, 8).sum(1)  # [t, E]
  np.testing.assert_array_equal(stats["load"], mask.sum(0))
  f = mask.reshape(2, 16, 8).sum(1) * 8 / (2 * 16)
  seq_aux = jnp.mean(jnp.sum(f * probs.reshape(2, 16, 8).mean(1), -1))
  np.testing.assert_allclose(stats["seq_aux"], seq_aux, rtol=1e-6)
  np.testing.assert_allclose(
    stats["switch_aux"], 8 * jnp.sum(mask.mean(0) / 2 * probs.mean(0)), rtol=1e-6
  )
  lse = jax.nn.logsumexp(logits, -1)
  np.testing.assert_allclose(stats["router_z"], jnp.mean(lse**2), rtol=1e-6)


@pytest.mark.parametrize(
  "change, field",
  [
    (dict(top_k=9), "top_k"),
    (dict(n_group=3), "n_group"),
    (dict(n_group=2, topk_group=3), "topk_group"),
    (dict(n_group=4, topk_group=1, top_k=3), "top_k"),
    (dict(router="topk"), "router"),
    (dict(activation="gelu"), "activation"),
    (dict(dispatch="sorted"), "compute.moe_dispatch"),
    (dict(num_shared_experts=1), "shared_mlp_dim"),
    (dict(shared_gate=True), "shared_gate"),
  ],
)
def test_validate_names_the_bad_field(change, field):
  with pytest.raises(ValueError, match=f"{field if '.' in field else 'model.moe.' + field}="):
    validate(dataclasses.replace(BASE, **change))


def test_jit_and_grad_through_both_dispatches_agree():
  x = _x((2, 8, E_DIM))

  @nnx.jit
  def loss_and_grad(model):
    def loss(model):
      y, stats = model(x)
      return jnp.mean(y**2) + 1e-2 * stats["seq_aux"] + 1e-3 * stats["router_z"]

    return nnx.value_and_grad(loss)(model)

  grads = {}
  for dispatch in ("dropless", "capacity"):  # ragged_dot / scatter + einsum + gather
    cfg = dataclasses.replace(DSV3, dispatch=dispatch, capacity_factor=8.0, shared_gate=True)
    moe = _moe(cfg)
    value, grads[dispatch] = loss_and_grad(moe)
    assert np.isfinite(value)
  for name in ("gate_proj", "up_proj", "down_proj"):
    assert np.abs(np.asarray(grads["dropless"]["experts"][name][...])).sum() > 0
  assert np.abs(np.asarray(grads["dropless"]["router"]["kernel"][...])).sum() > 0
  for a, b in zip(jax.tree.leaves(grads["dropless"]), jax.tree.leaves(grads["capacity"])):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
