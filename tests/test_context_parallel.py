"""Context parallelism's pieces on one device (the 8-device runs are in
test_sharding.py): the load-balanced sub-chunk layout, blockwise attention of one
query chunk against the whole sequence, and the length check."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeling.attention import blockwise
from modeling.attention import dot_product as dp
from parallelism import context
from parallelism.mesh import check_context
from tests.conftest import fake_devices_env


@pytest.mark.parametrize("C", [1, 2, 3, 4, 8])
def test_every_device_gets_one_front_and_one_back_sub_chunk(C):
  front, back = context._zigzag(C)
  got = {d: set() for d in range(C)}
  for perm, half in ((front, 0), (back, 1)):
    assert sorted(dst for _, dst in perm) == list(range(C))  # a permutation
    for src, dst in perm:
      got[dst].add(2 * src + half)  # device src holds sub-chunks 2 src, 2 src + 1
  assert got == {d: {d, 2 * C - 1 - d} for d in range(C)}


@pytest.mark.parametrize("kw", [dict(), dict(window=20, sinks=True), dict(chunk=24, softcap=2.0)])
def test_a_query_chunk_attends_like_its_rows_of_the_whole_sequence(kw):
  """chunk_attention of queries 32..47 (offset 32) against all 64 keys equals
  those rows of the reference, and so do the gradients it sends to q, k, v."""
  b, s, h, kh, d = 2, 64, 4, 2, 8
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  q, k, v, probe = normal(b, s, h, d), normal(b, s, kh, d), normal(b, s, kh, d), normal(b, 16, h, d)
  seg = jnp.asarray(np.repeat([[1] * 40 + [2] * 24], b, 0), jnp.int32)
  pos = jnp.asarray(np.repeat([list(range(40)) + list(range(24))], b, 0), jnp.int32)
  sinks = normal(h) if kw.get("sinks") else None
  opts = dict(scale=0.3, window=kw.get("window", 0), chunk=kw.get("chunk", 0),
              softcap=kw.get("softcap", 0.0), sinks=sinks)  # fmt: skip

  def chunk(q, k, v):
    keys = blockwise.Keys(seg[:, 32:48], seg, pos[:, 32:48], pos, jnp.int32(32))
    return blockwise.chunk_attention(q[:, 32:48], k, v, keys, block=16, **opts)

  def whole(q, k, v):
    out, top = dp.dot_product_attention(q, k, v, segment_ids=seg, positions=pos, **opts)
    return out[:, 32:48], top

  results = []
  for fn in (chunk, whole):
    loss = lambda q, k, v, fn=fn: ((fn(q, k, v)[0] * probe).sum(), fn(q, k, v)[0])
    results.append(jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v))
  (_, got), got_grads = results[0]
  (_, want), want_grads = results[1]
  np.testing.assert_allclose(got, want, atol=2e-6)
  for g, w in zip(got_grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, atol=5e-6)


def test_a_length_that_does_not_split_in_two_chunks_per_device_is_one_error(root):
  sizes = dict(data=1, fsdp=1, tensor=1, expert=1, context=4)
  check_context(64, sizes)
  with pytest.raises(
    ValueError, match=r"train\.seq_len=60 must be divisible by 2 x mesh\.context = 8"
  ):
    check_context(60, sizes)
  result = subprocess.run(
    [sys.executable, "scripts/plan.py", "--config", "configs/llama3.py:tiny",
     "--mesh", "fsdp=2,context=4", "--config.train.seq_len=100"],
    cwd=root, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
    "error: train.seq_len=100 must be divisible by 2 x mesh.context = 8"
  )


_UNDER_MESH = """
import sys
import jax, jax.numpy as jnp, numpy as np
from unittest import mock
from modeling.attention import dot_product as dp, linear
from parallelism import context, rules

mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 1, 1, 1, 4, 1), rules.MESH_AXES)
rng = np.random.default_rng(0)
normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
b, s = 2, 64
seg = jnp.asarray(np.repeat([[1] * 27 + [2] * 37], b, 0), jnp.int32)  # documents cross devices
pos = jnp.asarray(np.repeat([list(range(27)) + list(range(37))], b, 0), jnp.int32)
q, k, v, sinks = normal(b, s, 4, 8), normal(b, s, 2, 8), normal(b, s, 2, 8), normal(4)
g, beta = -0.1 * jnp.abs(normal(b, s, 2)), jax.nn.sigmoid(normal(b, s, 2))
cases = {
  "attention": lambda q, k, v: dp.dot_product_attention(
    q, k, v, segment_ids=seg, positions=pos, scale=0.3, window=20, softcap=3.0, sinks=sinks),
  "chunked mask": lambda q, k, v: dp.dot_product_attention(
    q, k, v, segment_ids=seg, positions=pos, scale=0.3, chunk=12),
  "deltanet": lambda q, k, v: linear.chunked(
    0.3 * q[:, :, :2], 0.3 * k, v, g, beta, chunk=8, segment_ids=seg),
}
calls = []
spy = lambda f: lambda *a, **kw: calls.append(f.__name__) or f(*a, **kw)
for name, fn in cases.items():
  loss = lambda q, k, v: sum((x.astype(jnp.float32) ** 2).sum() for x in fn(q, k, v))
  want = jax.value_and_grad(loss, (0, 1, 2))(q, k, v)

  def sharded(q, k, v):
    with rules.activate(mesh):
      return loss(q, k, v)

  with mock.patch.object(context, "attention", spy(context.attention)), \\
       mock.patch.object(context, "linear_state_pass", spy(context.linear_state_pass)):
    got = jax.jit(jax.value_and_grad(sharded, (0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, err_msg=name)
  for a, w in zip(got[1], want[1]):
    np.testing.assert_allclose(a, w, atol=2e-5, rtol=1e-5, err_msg=name)
assert calls == ["attention", "attention", "linear_state_pass"], calls
print("ok")
"""


def test_context_parallel_attention_and_deltanet_state_pass_match_one_device(root):
  """On data=2, context=4 fake devices, with documents crossing the devices'
  chunks: softmax attention (window, soft-cap, sinks; chunked mask) through the
  all-gather path, and the DeltaNet chunked form through the state passed between
  devices, give one device's outputs, max logits, final state and gradients."""
  result = subprocess.run(
    [sys.executable, "-c", _UNDER_MESH], cwd=root, env=fake_devices_env(8),
    capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "ok"
