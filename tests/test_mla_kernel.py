"""Specs for pallas_kernels/mla: latent-space MLA on the flash kernels' shared-K/V
mode (interpret mode on CPU) equals the plain-jnp reference, outputs and
gradients of q_lat, q_pe, c_kv and k_pe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.mla import ops, reference

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize(
  "b,s,h,c,r,window,segments,block",
  [(2, 70, 4, 32, 16, 0, 1, 32), (1, 100, 8, 64, 16, 30, 3, 16)],
)
def test_latent_attention_matches_reference(b, s, h, c, r, window, segments, block, dtype):
  keys = jax.random.split(jax.random.key(s), 5)
  q_lat = jax.random.normal(keys[0], (b, s, h, c), jnp.float32).astype(dtype)
  q_pe = jax.random.normal(keys[1], (b, s, h, r), jnp.float32).astype(dtype)
  c_kv = jax.random.normal(keys[2], (b, s, c), jnp.float32).astype(dtype)
  k_pe = jax.random.normal(keys[3], (b, s, r), jnp.float32).astype(dtype)
  cuts = np.sort(np.random.default_rng(s).integers(1, s, (b, segments - 1)), axis=1)
  seg = jnp.asarray(np.stack([np.searchsorted(x, np.arange(s), side="right") for x in cuts]))
  cot = jax.random.normal(keys[4], (b, s, h, c), jnp.float32)
  kw = dict(segment_ids=seg, scale=(c + r) ** -0.5 / 2, window=window)

  def loss(impl, *args):
    if impl == "pallas":
      out, mx = ops.mla_attention(*args, block_q=block, block_k=block, interpret=True, **kw)
    else:
      out, mx = reference.attention(*args, **kw)
    return jnp.sum(out.astype(jnp.float32) * cot), (out, mx)

  grad = lambda impl: jax.grad(loss, argnums=(1, 2, 3, 4), has_aux=True)(
    impl, q_lat, q_pe, c_kv, k_pe
  )
  (got_grads, (got, got_mx)), (want_grads, (want, want_mx)) = grad("pallas"), grad("reference")
  tol = TOL[dtype]
  bound = lambda x: tol * (float(jnp.max(jnp.abs(x.astype(jnp.float32)))) + 1.0)
  assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32)))) <= bound(want)
  np.testing.assert_allclose(got_mx, want_mx, rtol=1e-5 if dtype == jnp.float32 else 1e-2)
  for name, g, w in zip(["q_lat", "q_pe", "c_kv", "k_pe"], got_grads, want_grads):
    err = float(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32))))
    assert err <= bound(w), f"d{name}: max error {err:.2e}"
