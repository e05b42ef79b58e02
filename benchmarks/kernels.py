"""`bench.py kernels`: each Pallas kernel against its XLA reference (and cuDNN's
fused attention where it applies) on this device, forward plus backward."""

import time

import jax
import numpy as np


def _kernel_cases(tokens: int, dtype, interpret: bool):
  """(name, inputs, fn(implementation, *inputs) -> output, fwd + bwd FLOPs, cudnn) of each
  kernel; where `cudnn`, fn also takes implementation "cudnn" (jax.nn.dot_product_attention).
  FLOPs count the matmuls of the math (2 per multiply-add) over the visible pairs, not
  what a kernel recomputes: attention 7 matmuls (fwd QK, PV; bwd QK, dP, dV, dQ, dK)."""
  from modeling.attention import (
    linear,  # noqa: PLC0415
    sparse,  # noqa: PLC0415
  )
  from pallas_kernels.flash_attention import ops as flash_ops  # noqa: PLC0415
  from pallas_kernels.mla import ops as mla_ops  # noqa: PLC0415
  from pallas_kernels.sparse_attention import ops as sparse_ops  # noqa: PLC0415

  jnp = jax.numpy
  keys = iter(jax.random.split(jax.random.key(0), 32))
  normal = lambda *shape, dt=dtype: jax.random.normal(next(keys), shape, jnp.float32).astype(dt)
  b, s = 1, tokens
  seg = jnp.ones((b, s), jnp.int32)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  causal_pairs = s * (s + 1) / 2
  cases = []
  for h, kh, d, window in ((32, 8, 128, 0), (16, 8, 128, 1024)):  # Llama/Qwen3; Gemma 3 local
    pairs = window * s - window * (window - 1) / 2 if 0 < window < s else causal_pairs
    label = "causal" if not window else f"window {window}"
    cudnn_window = None if not window else (window - 1, 0)
    cases.append((
      f"flash attention {label}, {h} heads / {kh} kv, d {d}",
      (normal(b, s, h, d), normal(b, s, kh, d), normal(b, s, kh, d)),
      lambda impl, q, k, v, d=d, window=window, cw=cudnn_window: jax.nn.dot_product_attention(
        q, k, v, scale=d**-0.5, is_causal=True, local_window_size=cw, implementation="cudnn")
      if impl == "cudnn" else flash_ops.flash_attention(
        q, k, v, segment_ids=seg, scale=d**-0.5, window=window, implementation=impl,
        interpret=interpret)[0],
      7 * 2 * b * h * pairs * d,
      True,
    ))  # fmt: skip
  h, c, r = 16, 512, 64  # DeepSeek-V3's latent 512 + rope 64
  qk, pv = c + r, c  # widths of the QK-type matmuls (QK, dQ, dK) and PV-type (PV, dP, dV)
  cases.append((
    f"MLA latent, {h} heads, c {c} + rope {r}",
    (normal(b, s, h, c), normal(b, s, h, r), normal(b, s, c), normal(b, s, r)),
    lambda impl, ql, qp, ckv, kp: mla_ops.mla_attention(
      ql, qp, ckv, kp, segment_ids=seg, scale=(c + r) ** -0.5, implementation=impl,
      interpret=interpret)[0],
    2 * b * h * causal_pairs * (4 * qk + 3 * pv),
    False,
  ))  # fmt: skip
  topk = min(512, s // 2)
  scores = jnp.where(sparse.valid_keys(seg, 0), normal(b, s, s, dt=jnp.float32), sparse.NEG)
  indices = sparse.select(scores, topk)
  slots = float(jnp.sum(indices >= 0))  # filled slots: the pairs attended
  cases.append((
    f"sparse attention top-{topk}, {h} heads MQA, d {c + r} / dv {c}",
    (normal(b, s, h, c + r), normal(b, s, 1, c + r), normal(b, s, 1, c)),
    lambda impl, q, k, v: sparse_ops.sparse_attention(
      q, k, v, indices, scale=(c + r) ** -0.5, chunk=256, implementation=impl,
      interpret=interpret)[0],
    2 * h * slots * (4 * qk + 3 * pv),
    False,
  ))  # fmt: skip
  h, dk, chunk = 32, 128, 64  # Qwen3-Next's 32 value heads of 128 (key heads repeated)
  g = -jax.nn.softplus(normal(b, s, h, dt=jnp.float32))
  beta = jax.nn.sigmoid(normal(b, s, h, dt=jnp.float32))
  kernel_of = {"pallas": "pallas_interpret" if interpret else "pallas", "reference": "xla"}
  # per head and chunk, forward: k k^T, u = T v, w = T k, P = q k^T, P v_new (5 of c x c x d),
  # w S, q S, k^T v_new (3 of c x d x d); backward about twice the forward
  delta_flops = 3 * b * h * (s // chunk) * 2 * (5 * chunk * chunk * dk + 3 * chunk * dk * dk)
  cases.append((
    f"gated DeltaNet chunked (chunk {chunk}), {h} heads, dk = dv = {dk}",
    (unit(normal(b, s, h, dk, dt=jnp.float32)), unit(normal(b, s, h, dk, dt=jnp.float32)),
     normal(b, s, h, dk, dt=jnp.float32)),
    lambda impl, q, k, v: linear.chunked(q, k, v, g, beta, chunk=chunk, kernel=kernel_of[impl])[0],
    delta_flops,
    False,
  ))  # fmt: skip
  return cases


def bench(args):
  jnp = jax.numpy
  dtype = jnp.dtype(args.dtype)
  print(f"{jax.devices()[0].device_kind}; {args.tokens} tokens, batch 1, {args.dtype} inputs "
        f"(DeltaNet float32); forward + backward, median of {args.repeats}")  # fmt: skip
  print(f"  {'kernel':58s} {'ms xla':>8} {'ms pallas':>10} {'xla/pallas':>11} {'max rel diff':>13} "
        f"{'TFLOP/s':>8} {'ms cudnn':>9} {'cudnn/pallas':>13}")  # fmt: skip
  for name, inputs, fn, flops, has_cudnn in _kernel_cases(args.tokens, dtype, args.interpret):
    cot = jax.random.normal(
      jax.random.key(1), jax.eval_shape(lambda *xs: fn("reference", *xs), *inputs).shape
    )

    def loss(impl, *xs):
      out = fn(impl, *xs)
      return jnp.sum(out.astype(jnp.float32) * cot), out

    argnums = tuple(range(1, len(inputs) + 1))
    impls = ("reference", "pallas") + (("cudnn",) if has_cudnn and not args.interpret else ())
    results, times = {}, {}
    step = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True), static_argnums=0)
    try:
      for impl in ("reference", "pallas"):
        results[impl] = jax.block_until_ready(step(impl, *inputs))
    except Exception as error:  # noqa: BLE001 -- one kernel failing to lower is a result
      print(f"  {name:58s} FAILED ({impl}): {str(error).splitlines()[0][:300]}")
      continue
    for impl in impls:
      try:
        jax.block_until_ready(step(impl, *inputs))
      except Exception as error:  # noqa: BLE001 -- cuDNN missing or refusing the shape
        print(f"  ({impl}: {str(error).splitlines()[0][:200]})")
        continue
      runs = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(impl, *inputs))
        runs.append(time.perf_counter() - start)
      times[impl] = 1e3 * float(np.median(runs))
    want = jax.tree.leaves(results["reference"])
    got = jax.tree.leaves(results["pallas"])
    rel = max(
      float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
      / max(float(jnp.max(jnp.abs(y.astype(jnp.float32)))), 1e-30)
      for x, y in zip(got, want, strict=True)
    )
    ratio = times["reference"] / times["pallas"]
    tflops = f"{flops / times['pallas'] / 1e9:8.1f}" if flops else f"{'-':>8}"
    cudnn = (f"{times['cudnn']:9.2f} {times['cudnn'] / times['pallas']:12.2f}x" if "cudnn" in times
             else f"{'-':>9} {'-':>13}")  # fmt: skip
    print(f"  {name:58s} {times['reference']:8.2f} {times['pallas']:10.2f} {ratio:10.2f}x "
          f"{rel:13.2e} {tflops} {cudnn}")  # fmt: skip
