"""Specs for modeling/attention/linear.py: the gated delta rule's chunked form
equals its step-by-step recurrence (outputs, final state and gradients, fp32
1e-5) for several chunk sizes, lengths not a multiple of the chunk, per-head
(gated DeltaNet) and per-channel (KDA) decay, packed documents; and the
recurrence equals the spec's matrix formula computed in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeling.attention import linear
from modeling.attention.factory import attention_layer
from modeling.context import Context

B, S, H, DK, DV = 2, 45, 3, 8, 6
SEGMENTS = np.array([[1] * 20 + [2] * 25, [1] * 7 + [2] * 30 + [3] * 8])


def _inputs(per_channel: bool, seed=0, s=S):
  keys = jax.random.split(jax.random.key(seed), 5)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # L2-normalised, as the layer
  q = unit(jax.random.normal(keys[0], (B, s, H, DK)))
  k = unit(jax.random.normal(keys[1], (B, s, H, DK)))
  v = jax.random.normal(keys[2], (B, s, H, DV))
  g = -jax.nn.softplus(jax.random.normal(keys[3], (B, s, H, DK) if per_channel else (B, s, H)))
  beta = jax.nn.sigmoid(jax.random.normal(keys[4], (B, s, H)))
  return q, k, v, g, beta


def _numpy_delta_rule(q, k, v, g, beta):
  """The spec's form, state S [dv, dk]: S_t = S_{t-1} diag(a_t) (I - b_t k_t k_t^T) +
  b_t v_t k_t^T, o_t = S_t q_t (diag(a_t) = a_t I for a per-head decay)."""
  q, k, v, g, beta = (np.asarray(x, np.float64) for x in (q, k, v, g, beta))
  out = np.zeros(v.shape)
  for bi in range(q.shape[0]):
    for hi in range(q.shape[2]):
      state = np.zeros((v.shape[-1], q.shape[-1]))
      for t in range(q.shape[1]):
        kt, a = k[bi, t, hi], np.exp(g[bi, t, hi]) * np.ones(q.shape[-1])
        state = state @ np.diag(a) @ (np.eye(len(kt)) - beta[bi, t, hi] * np.outer(kt, kt))
        state = state + beta[bi, t, hi] * np.outer(v[bi, t, hi], kt)
        out[bi, t, hi] = state @ q[bi, t, hi]
  return out


@pytest.mark.parametrize("per_channel", [False, True], ids=["head_decay", "channel_decay"])
def test_recurrence_is_the_spec_formula(per_channel):
  q, k, v, g, beta = _inputs(per_channel, s=12)
  o, _ = linear.recurrent(q, k, v, g, beta)
  np.testing.assert_allclose(o, _numpy_delta_rule(q, k, v, g, beta), atol=1e-5)


@pytest.mark.parametrize("chunk", [4, 16, 64])
@pytest.mark.parametrize("packed", [False, True], ids=["one_doc", "packed"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["head_decay", "channel_decay"])
def test_chunked_equals_recurrent_outputs_state_and_gradients(per_channel, packed, chunk):
  inputs = _inputs(per_channel)
  seg = jnp.asarray(SEGMENTS) if packed else None
  cotangent = jax.random.normal(jax.random.key(7), (B, S, H, DV))

  def loss(form, *xs):
    o, state = form(*xs, segment_ids=seg)
    return jnp.sum(o * cotangent) + jnp.sum(jnp.sin(state)), (o, state)

  chunked = lambda *xs, **kw: linear.chunked(*xs, chunk=chunk, **kw)
  grad = lambda form: jax.grad(loss, argnums=(1, 2, 3, 4, 5), has_aux=True)(form, *inputs)
  (want_grads, (want_o, want_state)) = grad(linear.recurrent)
  (got_grads, (got_o, got_state)) = grad(chunked)
  np.testing.assert_allclose(got_o, want_o, atol=1e-5)
  np.testing.assert_allclose(got_state, want_state, atol=1e-5)
  for name, got, want in zip(["q", "k", "v", "g", "beta"], got_grads, want_grads, strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("size", [1, 3, 16, 45])
def test_unit_lower_inverse_is_the_inverse(size):
  """The chunk's block-merging inverse, sizes that are and are not powers of two."""
  a = np.tril(np.random.default_rng(size).normal(size=(2, size, size)) * 0.3, -1)
  expected = np.linalg.inv(np.eye(size) - a)
  np.testing.assert_allclose(
    linear._unit_lower_inverse(jnp.asarray(a, jnp.float32)), expected, atol=1e-5
  )


@pytest.mark.parametrize("per_channel", [False, True], ids=["head_decay", "channel_decay"])
def test_packed_documents_equal_separate_runs(per_channel):
  q, k, v, g, beta = _inputs(per_channel)
  seg = jnp.asarray(SEGMENTS)
  packed, _ = linear.chunked(q, k, v, g, beta, chunk=16, segment_ids=seg)
  unsegmented, _ = linear.chunked(q, k, v, g, beta, chunk=16)
  assert not np.allclose(packed, unsegmented, atol=1e-3)  # the resets matter
  for row in range(B):
    bounds = np.flatnonzero(np.diff(SEGMENTS[row])) + 1
    for lo, hi in zip([0, *bounds], [*bounds, S], strict=True):
      doc = [x[row : row + 1, lo:hi] for x in (q, k, v, g, beta)]
      alone, _ = linear.recurrent(*doc)
      np.testing.assert_allclose(packed[row : row + 1, lo:hi], alone, atol=1e-5)


def test_a_carried_state_continues_the_sequence():
  """Prefill then continue (the decode path's contract): the state carries exactly."""
  q, k, v, g, beta = _inputs(False)
  whole, _ = linear.chunked(q, k, v, g, beta, chunk=8)
  first, state = linear.chunked(*(x[:, :20] for x in (q, k, v, g, beta)), chunk=8)
  rest, _ = linear.recurrent(*(x[:, 20:] for x in (q, k, v, g, beta)), initial_state=state)
  np.testing.assert_allclose(jnp.concatenate([first, rest], axis=1), whole, atol=1e-5)


def _hf_gated_delta_net():
  """A tiny float32 HF Qwen3NextGatedDeltaNet, every weight random: 2 key heads
  serving 4 value heads, conv kernel 4."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  from transformers.models.qwen3_next import modeling_qwen3_next as hf_next  # noqa: PLC0415

  config = transformers.Qwen3NextConfig(
    hidden_size=64, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
    linear_value_head_dim=8, linear_conv_kernel_dim=4, num_hidden_layers=1,
    layer_types=["linear_attention"],
  )  # fmt: skip
  torch.manual_seed(0)
  layer = hf_next.Qwen3NextGatedDeltaNet(config, layer_idx=0).float().eval()
  with torch.no_grad():
    for p in layer.parameters():
      p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.3))
    layer.A_log.copy_(torch.log(torch.rand_like(layer.A_log) * 2 + 0.5))
    layer.dt_bias.copy_(torch.randn_like(layer.dt_bias))
  return layer


def _load_hf(ours, layer):
  """HF tensors -> our params: the fused layouts are the same, transposed."""
  t = lambda p: jnp.asarray(p.detach().numpy())
  e = ours.cfg.embed_dim
  ours.in_proj_qkvz.set_value(t(layer.in_proj_qkvz.weight).T.reshape(e, ours.cfg.num_k_heads, -1))
  ours.in_proj_ba.set_value(t(layer.in_proj_ba.weight).T.reshape(e, ours.cfg.num_k_heads, -1))
  ours.conv.set_value(t(layer.conv1d.weight)[:, 0, :].T)
  ours.A_log.set_value(t(layer.A_log))
  ours.dt_bias.set_value(t(layer.dt_bias))
  ours.norm.scale.set_value(t(layer.norm.weight))
  ours.out_proj.set_value(t(layer.out_proj.weight).T.reshape(ours.cfg.num_v_heads, -1, e))


def test_gated_delta_net_layer_matches_hf_qwen3_next():
  import torch  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from modeling.attention.linear import DeltaNetConfig  # noqa: PLC0415

  layer = _hf_gated_delta_net()
  cfg = DeltaNetConfig(embed_dim=64, num_k_heads=2, num_v_heads=4, k_head_dim=16, v_head_dim=8,
                       chunk=16)  # fmt: skip
  ours = linear.GatedDeltaNet(cfg, rngs=nnx.Rngs(0))
  _load_hf(ours, layer)
  x = np.random.default_rng(0).normal(size=(2, 37, 64)).astype(np.float32)
  with torch.no_grad():
    want = layer(torch.as_tensor(x)).numpy()
  seg = jnp.ones((2, 37), jnp.int32)
  got, _ = ours(jnp.asarray(x), Context(None, seg))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def _hf_kimi_delta_attention():
  """A tiny float32 HF KimiLinearDeltaAttention, every weight random: 4 heads of 16."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  from transformers.models.kimi_linear import modeling_kimi_linear as hf_kimi  # noqa: PLC0415

  config = transformers.KimiLinearConfig(
    hidden_size=64, linear_num_heads=4, linear_head_dim=16, linear_conv_kernel_dim=4,
    num_hidden_layers=1, layer_types=["linear_attention"], mlp_layer_types=["dense"],
  )  # fmt: skip
  torch.manual_seed(0)
  layer = hf_kimi.KimiLinearDeltaAttention(config, layer_idx=0).float().eval()
  with torch.no_grad():
    for p in layer.parameters():
      p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.3))
    gate = layer.forget_gate
    gate.A_log.copy_(torch.log(torch.rand_like(gate.A_log) * 2 + 0.5))
    gate.dt_bias.copy_(torch.randn_like(gate.dt_bias))
  return layer


def test_kimi_delta_attention_layer_matches_hf_kimi_linear():
  import torch  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from modeling.attention.linear import DeltaNetConfig  # noqa: PLC0415

  layer = _hf_kimi_delta_attention()
  cfg = DeltaNetConfig(embed_dim=64, num_k_heads=4, num_v_heads=4, k_head_dim=16, v_head_dim=16,
                       chunk=16, kind="kda", norm_eps=layer.o_norm.variance_epsilon)  # fmt: skip
  ours = attention_layer(cfg, rngs=nnx.Rngs(0))
  assert isinstance(ours, linear.KimiDeltaAttention)
  t = lambda p: jnp.asarray(p.detach().numpy())
  heads = lambda w: t(w).T.reshape(64, 4, 16)  # torch [h * d, e] -> [e, h, d]
  low_rank = lambda w: t(w).T.reshape(16, 4, 16)  # torch [h * d, r] -> [r, h, d]
  gate = layer.forget_gate
  for name, value in {
    "q_proj": heads(layer.q_proj.weight), "k_proj": heads(layer.k_proj.weight),
    "v_proj": heads(layer.v_proj.weight),
    **dict(zip(["q_conv", "k_conv", "v_conv"], jnp.split(t(layer.conv1d.weight)[:, 0, :].T, 3, 1))),
    "f_a_proj": t(gate.f_a_proj.weight).T, "f_b_proj": low_rank(gate.f_b_proj.weight),
    "g_a_proj": t(layer.g_a_proj.weight).T, "g_b_proj": low_rank(layer.g_b_proj.weight),
    "b_proj": t(layer.b_proj.weight).T, "A_log": t(gate.A_log).reshape(4),
    "dt_bias": t(gate.dt_bias).reshape(4, 16), "o_proj": t(layer.o_proj.weight).T.reshape(4, 16, 64),
  }.items():  # fmt: skip
    getattr(ours, name).set_value(value)
  ours.norm.scale.set_value(t(layer.o_norm.weight))
  x = np.random.default_rng(0).normal(size=(2, 37, 64)).astype(np.float32)
  with torch.no_grad():
    want = layer(torch.as_tensor(x)).numpy()
  got, _ = ours(jnp.asarray(x), Context(None, jnp.ones((2, 37), jnp.int32)))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gated_deltanet", "kda", "lightning"])
def test_linear_attention_layer_packed_documents_equal_separate_runs(kind):
  """The short conv (where there is one) and the state restart at a document boundary."""
  from flax import nnx  # noqa: PLC0415

  from modeling.attention.linear import DeltaNetConfig  # noqa: PLC0415

  heads = 4 if kind == "gated_deltanet" else 2
  cfg = DeltaNetConfig(embed_dim=32, num_k_heads=2, num_v_heads=heads, k_head_dim=8,
                       v_head_dim=8, chunk=8, kind=kind)  # fmt: skip
  layer = attention_layer(cfg, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (1, 30, 32))
  seg = jnp.asarray([[1] * 11 + [2] * 19])
  packed, _ = layer(x, Context(None, seg))
  for lo, hi in ((0, 11), (11, 30)):
    alone, _ = layer(x[:, lo:hi], Context(None, jnp.ones((1, hi - lo), jnp.int32)))
    np.testing.assert_allclose(packed[:, lo:hi], alone, atol=1e-5)


@pytest.mark.parametrize("kind", ["gated_deltanet", "kda", "lightning"])
def test_flops_count_every_projection_of_the_layer(kind):
  """trainer.metrics counts a linear-attention layer's matmul params: every weight
  matrix the layer builds (not its conv taps, decay rates, biases or norm)."""
  from flax import nnx  # noqa: PLC0415

  from modeling.attention.linear import DeltaNetConfig  # noqa: PLC0415
  from trainer import metrics  # noqa: PLC0415

  heads = 4 if kind == "gated_deltanet" else 2
  cfg = DeltaNetConfig(embed_dim=32, num_k_heads=2, num_v_heads=heads, k_head_dim=8,
                       v_head_dim=8, kind=kind)  # fmt: skip
  layer = nnx.eval_shape(lambda: attention_layer(cfg, rngs=nnx.Rngs(0)))
  skip = ("conv", "bias", "scale", "A_log")
  matrices = sum(
    v.get_value().size
    for path, v in nnx.to_flat_state(nnx.state(layer, nnx.Param))
    if not str(path[-1]).endswith(skip)
  )
  assert metrics._attention_shape(cfg)[0] == matrices
