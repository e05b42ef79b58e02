"""Specs for pallas_kernels/chunked_delta: the state-pass kernels (interpret mode
on CPU) equal the pure-jnp reference, outputs, final state and gradients of
every input (the state entering the pass included), with the value dim split
over 1 or several programs; and the whole chunked delta rule run on the kernel
equals the step-by-step recurrence for per-head and per-channel decay, packed
documents and lengths not a multiple of the chunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeling.attention import linear
from modeling.context import Context
from pallas_kernels.chunked_delta import ops, reference
from tests.test_linear_attention import SEGMENTS, _inputs

B, H = 2, 3


def _terms(seed, n, c, dk, dv):
  """Random terms scaled like the real ones, so the state stays O(1) over chunks."""
  keys = jax.random.split(jax.random.key(seed), 7)
  normal = lambda i, *shape: jax.random.normal(keys[i], (B, H, *shape))
  keyed = lambda i: normal(i, n, c, dk) / np.sqrt(c * dk)
  P = jnp.tril(normal(4, n, c, c)) / c
  a = jax.nn.sigmoid(normal(5, n, dk) * 4)  # row decays in (0, 1)
  a = a.at[:, :, 1].set(0.0)  # a document starts in chunk 1: nothing carries
  return keyed(0), keyed(1), normal(2, n, c, dv), keyed(3), P, a, normal(6, dk, dv)


@pytest.mark.parametrize(
  "n, c, dk, dv, block_v", [(3, 8, 16, 16, 16), (4, 16, 8, 32, 8), (1, 4, 32, 16, 64)]
)
def test_kernel_matches_reference_outputs_and_gradients(n, c, dk, dv, block_v):
  terms = _terms(n + c, n, c, dk, dv)
  cot_o = jax.random.normal(jax.random.key(11), (B, H, n, c, dv))
  cot_s = jax.random.normal(jax.random.key(12), (B, H, dk, dv))

  def loss(impl, *xs):
    kw = dict(implementation=impl, block_v=block_v, interpret=True) if impl == "pallas" else {}
    o, state = ops.state_pass(*xs, **kw) if impl == "pallas" else reference.state_pass(*xs)
    return jnp.sum(o * cot_o) + jnp.sum(state * cot_s), (o, state)

  grad = lambda impl: jax.grad(loss, argnums=tuple(range(1, 8)), has_aux=True)(impl, *terms)
  want_grads, (want_o, want_state) = grad("reference")
  got_grads, (got_o, got_state) = grad("pallas")
  np.testing.assert_allclose(got_o, want_o, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got_state, want_state, atol=1e-5, rtol=1e-5)
  names = ["qd", "w", "u", "kd", "P", "a", "state"]
  for name, got, want in zip(names, got_grads, want_grads, strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("packed", [False, True], ids=["one_doc", "packed"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["head_decay", "channel_decay"])
def test_chunked_on_the_kernel_equals_recurrent(per_channel, packed):
  inputs = _inputs(per_channel)  # 45 tokens: chunks of 16 leave 13 over
  seg = jnp.asarray(SEGMENTS) if packed else None
  cotangent = jax.random.normal(jax.random.key(7), inputs[2].shape)

  def loss(form, *xs):
    o, state = form(*xs, segment_ids=seg)
    return jnp.sum(o * cotangent) + jnp.sum(jnp.sin(state)), (o, state)

  on_kernel = lambda *xs, **kw: linear.chunked(*xs, chunk=16, kernel="pallas_interpret", **kw)
  grad = lambda form: jax.grad(loss, argnums=(1, 2, 3, 4, 5), has_aux=True)(form, *inputs)
  want_grads, (want_o, want_state) = grad(linear.recurrent)
  got_grads, (got_o, got_state) = grad(on_kernel)
  np.testing.assert_allclose(got_o, want_o, atol=1e-5)
  np.testing.assert_allclose(got_state, want_state, atol=1e-5)
  for name, got, want in zip(["q", "k", "v", "g", "beta"], got_grads, want_grads, strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"d{name}")


def test_block_v_must_divide_the_value_dim():
  terms = _terms(0, 2, 4, 8, 24)
  with pytest.raises(ValueError, match="block_v=16 must divide the value dim 24"):
    ops.state_pass(*terms, implementation="pallas", block_v=16, interpret=True)


@pytest.mark.parametrize("family", ["qwen3_next", "kimi_linear"])
def test_model_attention_kernel_runs_the_linear_layers_on_the_kernel(family):
  """compute.attention_kernel reaches the linear-attention layers, whose outputs on the
  kernel equal the XLA loop's."""
  import dataclasses  # noqa: PLC0415

  from flax import nnx  # noqa: PLC0415

  from modeling.attention.factory import attention_layer  # noqa: PLC0415
  from modeling.attention.linear import DeltaNetConfig  # noqa: PLC0415
  from modeling.config import Options, decoder_config  # noqa: PLC0415
  from tests.conftest import family_config  # noqa: PLC0415

  model = family_config(family).model
  options = Options(attention_kernel="pallas_interpret")
  layers = [b.attention for b in decoder_config(model, options).blocks]
  cfg = next(c for c in layers if isinstance(c, DeltaNetConfig))
  assert cfg.kernel == "pallas_interpret"
  x = jax.random.normal(jax.random.key(0), (1, 40, cfg.embed_dim))
  seg = jnp.asarray([[1] * 15 + [2] * 25])
  run = lambda c: attention_layer(c, rngs=nnx.Rngs(0))(x, Context(None, seg))
  on_kernel, _ = run(cfg)
  on_xla, _ = run(dataclasses.replace(cfg, kernel="xla"))
  np.testing.assert_allclose(on_kernel, on_xla, atol=1e-5)
