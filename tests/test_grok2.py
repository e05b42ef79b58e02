"""Grok 2.5 specs. Transformers has no Grok model to compare with, so these pin the
structure: the published size, the always-on MLP beside the experts, the routing
math against a plain-jnp reference, and the output-logit multiplier's place."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modeling.config import decoder_config
from modeling.decoder import Decoder
from modeling.moe import MoE
from tests.conftest import family_config, random_module
from trainer.state import active_param_count, param_count

T = 24  # tokens


def _tiny_moe_config():
  """The tiny preset's MoE layer config (softcap, GeGLU, shared MLP, 1/sqrt(2)), shrunk."""
  m = family_config("grok2").model
  m.embed_dim, m.num_heads, m.num_kv_heads = 16, 4, 2
  m.moe.expert_mlp_dim, m.moe.shared_mlp_dim = 12, 24
  return decoder_config(m).blocks[0].mlp


def _moe(cfg):
  return random_module(MoE, cfg)


def _x(seed=7):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((1, T, 16)), jnp.float32)


def _geglu(x, gate, up, down):
  return (jax.nn.gelu(x @ gate, approximate=True) * (x @ up)) @ down


def _always_on_mlp(moe, tokens):  # tokens [t, e] -> [t, e]
  s = moe.shared
  return _geglu(tokens, s.gate_proj[...], s.up_proj[...], s.down_proj[...])


def test_full_preset_has_the_published_270b_params():
  """xai-org/grok-2 is ~270B. 269.5B here, with an untied output head; 114.9B of them
  active per token (attention, the always-on MLP, 2 of 8 experts, embedding and head);
  xAI publishes no active count, so that one is not held to anything."""
  cfg = decoder_config(family_config("grok2", "full").model)
  total = param_count(cfg)
  assert abs(total - 270e9) / 270e9 < 0.02, f"{total / 1e9:.2f}B"
  per_expert = 3 * 8192 * 16_384
  assert total - active_param_count(cfg) == 64 * 6 * per_expert


def test_always_on_mlp_reaches_every_token_when_the_routed_experts_give_nothing():
  """Routed experts zeroed and capacity 1 slot per expert (most (token, expert) pairs
  dropped, so most tokens get no routed expert at all): every token's output is still
  (1/sqrt(2)) * MLP(x). Were the MLP routed like an expert, dropped tokens would get 0."""
  cfg = dataclasses.replace(_tiny_moe_config(), dispatch="capacity", capacity_factor=1e-6)
  moe = _moe(cfg)
  moe.experts.down_proj[...] = jnp.zeros_like(moe.experts.down_proj[...])
  x = _x()
  y, stats = moe(x)
  assert float(stats["dropped_frac"]) > 0.5  # the router gave most tokens nothing
  expected = _always_on_mlp(moe, x[0]) / math.sqrt(2)
  np.testing.assert_allclose(y[0], expected, rtol=1e-5, atol=1e-6)
  assert np.all(np.abs(np.asarray(y[0])).max(-1) > 1e-3), "a token got no always-on MLP"


def test_top2_routing_plus_always_on_mlp_equals_dense_reference():
  """y = (Σ_top2 softmax(30·tanh(l/30))_i · E_i(x) + MLP(x)) / sqrt(2), GeGLU everywhere,
  the top-2 weights not renormalised; every expert computed on every token in plain jnp.
  Router weights at std 20 make the logits large enough for the soft-cap to matter."""
  moe = _moe(_tiny_moe_config())
  moe.router.kernel[...] = moe.router.kernel[...] * 40.0
  x = _x()
  tokens = x[0]  # [t, e]
  logits = tokens @ moe.router.kernel[...]  # [t, E]
  assert float(jnp.abs(logits).max()) > 60.0  # the cap bites
  probs = jax.nn.softmax(30.0 * jnp.tanh(logits / 30.0), axis=-1)
  top2 = jnp.argsort(-probs, axis=-1)[:, :2]  # [t, 2]
  weights = jnp.take_along_axis(probs, top2, axis=-1)  # [t, 2], sum < 1
  ex = moe.experts
  every = jnp.stack(
    [
      _geglu(tokens, ex.gate_proj[...][i], ex.up_proj[...][i], ex.down_proj[...][i])
      for i in range(8)
    ],
    axis=1,
  )  # [t, E, e]
  routed = jnp.einsum("tke,tk->te", jnp.take_along_axis(every, top2[:, :, None], 1), weights)
  expected = (routed + _always_on_mlp(moe, tokens)) / math.sqrt(2)
  y, _ = moe(x)
  np.testing.assert_allclose(y[0], expected, rtol=1e-5, atol=1e-5)


def test_output_logits_are_scaled_by_half_then_soft_capped_at_50():
  """logits = 50·tanh(0.5·(h @ W_out) / 50). A large head makes the order matter:
  capping first (0.5·50·tanh(z/50)) tops out at 25."""
  m = family_config("grok2").model
  m.num_layers, m.embed_dim, m.moe.expert_mlp_dim, m.moe.shared_mlp_dim = 1, 32, 16, 32
  cfg = decoder_config(m)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  model.lm_head[...] = model.lm_head[...] * 2000.0
  tokens = jnp.arange(12, dtype=jnp.int32)[None]
  logits, _ = model(tokens)
  model.cfg = dataclasses.replace(cfg, logit_scale=1.0, final_softcap=0.0)
  raw, _ = model(tokens)
  assert float(jnp.abs(raw).max()) > 200.0
  np.testing.assert_allclose(logits, 50.0 * np.tanh(0.5 * raw / 50.0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
  "field,value,named",
  [
    ("logit_scale", 0.0, "model.logit_scale=0.0"),
    ("moe.output_scale", -1.0, "model.moe.output_scale=-1.0"),
    ("moe.router_softcap", -30.0, "model.moe.router_softcap=-30.0"),
    ("moe.activation", "clamped_swiglu", "model.moe.activation='clamped_swiglu'"),
  ],
)
def test_bad_new_fields_are_errors_naming_the_field(field, value, named):
  m = family_config("grok2").model
  node, leaf = (m.moe, field.split(".")[1]) if "." in field else (m, field)
  node[leaf] = value
  with pytest.raises(ValueError, match=named.replace("(", r"\(")):
    decoder_config(m)
