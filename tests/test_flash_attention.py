"""Specs for pallas_kernels/flash_attention: the Pallas kernels (interpret mode on
CPU) equal the pure-jnp reference, outputs and gradients, over randomised shapes:
lengths not a multiple of the block, GQA ratios 1/4/8, windows, sinks, packed
segments and soft-capping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.flash_attention import kernel, ops, reference

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _inputs(seed, b, s, h, kh, d, dv, dtype, segments):
  keys = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(keys[0], (b, s, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(keys[1], (b, s, kh, d), jnp.float32).astype(dtype)
  v = jax.random.normal(keys[2], (b, s, kh, dv), jnp.float32).astype(dtype)
  sinks = jax.random.normal(keys[3], (h,), jnp.float32)
  cuts = np.sort(np.random.default_rng(seed).integers(1, s, (b, segments - 1)), axis=1)
  seg = np.stack([np.searchsorted(c, np.arange(s), side="right") for c in cuts])
  return q, k, v, sinks, jnp.asarray(seg, jnp.int32)


CASES = [  # (b, s, h, kh, d, dv, window, softcap, sinks, segments, block, dkv_heads)
  (2, 100, 4, 4, 32, 32, 0, 0.0, False, 1, 32, 0),  # MHA, 100 = 3 blocks + 4
  (1, 77, 8, 2, 16, 24, 0, 0.0, True, 3, 16, 2),  # GQA 4 (dk/dv 2 heads a program), sinks, packed
  (2, 64, 8, 1, 16, 16, 20, 0.0, False, 2, 16, 0),  # MQA (8), window 20 skips blocks
  (1, 130, 4, 1, 32, 32, 48, 30.0, True, 4, 32, 1),  # everything at once
  (1, 96, 2, 2, 64, 64, 0, 5.0, False, 1, 64, 0),  # soft-capping, one 64 block + pad
  (1, 70, 4, 2, 48, 32, 0, 0.0, True, 2, 32, 0),  # q.k in column parts 32 + 16 (MLA's 128 + 64)
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"s{c[1]}h{c[2]}kh{c[3]}w{c[6]}")
def test_kernel_matches_reference_outputs_and_gradients(case, dtype):
  b, s, h, kh, d, dv, window, softcap, with_sinks, segments, block, dkv_heads = case
  q, k, v, sinks, seg = _inputs(s + h, b, s, h, kh, d, dv, dtype, segments)
  sinks = sinks if with_sinks else None
  kw = dict(segment_ids=seg, scale=d**-0.5, window=window, softcap=softcap)
  cotangent = jax.random.normal(jax.random.key(9), (b, s, h, dv), jnp.float32).astype(dtype)

  def loss(impl, q, k, v, sinks):
    if impl == "pallas":
      out, mx = ops.flash_attention(
        q,
        k,
        v,
        sinks=sinks,
        block_q=block,
        block_k=block,
        dkv_heads=dkv_heads,
        interpret=True,
        **kw,
      )
    else:
      out, mx = reference.attention(q, k, v, sinks=sinks, **kw)
    return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32)), (out, mx)

  argnums = (1, 2, 3, 4) if with_sinks else (1, 2, 3)
  grad = lambda impl: jax.grad(loss, argnums=argnums, has_aux=True)(impl, q, k, v, sinks)
  (got_grads, (got, got_mx)), (want_grads, (want, want_mx)) = grad("pallas"), grad("reference")
  tol = TOL[dtype]
  scale = lambda x: float(jnp.max(jnp.abs(x.astype(jnp.float32)))) + 1.0
  np.testing.assert_allclose(
    np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol * scale(want), rtol=0
  )
  np.testing.assert_allclose(got_mx, want_mx, rtol=1e-5 if dtype == jnp.float32 else 1e-2)
  for name, g, w in zip("qkvs", got_grads, want_grads):
    err = float(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32))))
    assert err <= tol * scale(w), f"d{name}: max error {err:.2e}"


def test_cpu_default_is_the_reference_and_bad_settings_are_errors():
  assert ops.default_implementation() == "reference"
  q, k, v, _, seg = _inputs(0, 1, 8, 4, 3, 8, 8, jnp.float32, 1)
  with pytest.raises(ValueError, match="not a multiple of 3 kv heads"):
    ops.flash_attention(q, k, v, segment_ids=seg, scale=1.0, implementation="pallas")
  with pytest.raises(ValueError, match="implementation='cuda'"):
    ops.flash_attention(q, k, v, segment_ids=seg, scale=1.0, implementation="cuda")


@pytest.mark.parametrize("window", [0, 1, 20, 64, 200])
@pytest.mark.parametrize("block_q,block_k", [(16, 16), (32, 16), (16, 64)])
def test_loops_visit_exactly_the_blocks_with_a_visible_key(window, block_q, block_k):
  """Skipping is exact: a (query block, key block) tile is visited iff the causal and
  window masks leave some key of it visible to some query of it."""
  seq = 256
  keep = np.asarray(reference.mask(jnp.zeros((1, seq), jnp.int32), window))[0, 0]
  num_q, num_k = seq // block_q, seq // block_k
  for i in range(num_q):
    lo, hi = kernel._kv_blocks(i, block_q, block_k, window, num_k)
    for j in range(num_k):
      tile = keep[i * block_q : (i + 1) * block_q, j * block_k : (j + 1) * block_k]
      assert (int(lo) <= j < int(hi)) == tile.any(), (i, j)
      q_lo, q_hi = kernel._q_blocks(j, block_q, block_k, window, num_q)
      assert (int(q_lo) <= i < int(q_hi)) == tile.any(), (i, j)


@pytest.mark.parametrize(
  "family,absorbed", [("gpt_oss", False), ("deepseek_v3", False), ("deepseek_v3", True)]
)
def test_models_on_the_pallas_kernel_match_xla_logits_and_gradients(family, absorbed, monkeypatch):
  """gpt-oss: GQA with sinks and a 1:1 window pattern; DeepSeek-V3: MLA (dv != d), and
  MLA in latent space (shared K/V: the cache row serves as keys and values)."""
  from flax import nnx  # noqa: PLC0415

  from modeling.decoder import Decoder  # noqa: PLC0415
  from tests.conftest import small_train_config  # noqa: PLC0415
  from trainer import precision  # noqa: PLC0415

  config = small_train_config(family)
  config.compute.mla_absorbed = absorbed
  config.model.sliding_window = min(config.model.sliding_window, 24) or 24
  tokens = jax.random.randint(jax.random.key(0), (2, 72), 0, 256)
  segments = jnp.asarray(np.repeat([[1, 2]], 36, axis=1).reshape(1, 72).repeat(2, 0))
  positions = jnp.asarray(np.tile(np.arange(36), 2)[None].repeat(2, 0))
  calls = []
  forward = kernel.forward
  monkeypatch.setattr(kernel, "forward", lambda *a, **kw: calls.append(1) or forward(*a, **kw))
  results = []
  for kernel_name in ("xla", "pallas_interpret"):
    config.compute.attention_kernel = kernel_name
    model = Decoder(precision.model_config(config), rngs=nnx.Rngs(0))

    def loss(model):
      logits, _ = model(tokens, positions=positions, segment_ids=segments)
      return jnp.mean(logits**2), logits

    (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    results.append((logits, jax.tree.leaves(nnx.to_pure_dict(grads))))
  assert calls, "the pallas_interpret model never ran the kernel"
  (want, want_grads), (got, got_grads) = results
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  for g, w in zip(got_grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-6 + 1e-4 * float(jnp.abs(w).max()), rtol=0)
