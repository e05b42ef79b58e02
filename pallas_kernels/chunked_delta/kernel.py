"""The chunked delta rule's state pass in Pallas: forward and backward.

Layouts (ops.py flattens chunks into rows): qd, w, kd [b, h, n*c, k];
u, o [b, h, n*c, v]; P [b, h, n*c, c]; a [b, h, n*k, 1] (chunk i's row decays
at rows i*k...); states [b, h, n*k, v]. The grid is (batch, head, value block):
every column of v runs the recurrence on its own, so one program owns the
state's columns [k, block_v] and walks the chunks in order, keeping the state
in registers; nothing but the state crosses chunks.

The forward also writes the state entering each chunk (`states`, what the
backward reads instead of recomputing the pass). The backward walks the chunks
in reverse with dS, the gradient of the state leaving the chunk:

  dv_new = P^T dO + kd dS        du = dv_new       dw = -dv_new S^T
  dqd = dO S^T   dkd = v_new dS^T   dP = dO v_new^T   da = rowsum(S * dS)
  dS <- a * dS + qd^T dO - w^T dv_new

The terms summed over v (dqd, dw, dkd, dP, da) are this program's share of
its value block; ops.py adds the blocks.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import triton_params

# Triton launch settings. On an H100 (jax 0.11.2, k = v = 128, chunk 64) block_v 64
# at 4 warps ran the pass 1.8x slower than block_v 32, and the default pipelining
# asked for more shared memory than the chip has (benchmarks/results/kernels_h100.txt).
COMPILER = dict(num_warps=4, num_stages=1)


def _dot(x, y, contract):  # 2-D matmul over (x axis, y axis), float32 accumulation
  return jax.lax.dot_general(x, y, (((contract[0],), (contract[1],)), ((), ())),
                             preferred_element_type=jnp.float32)  # fmt: skip


def _fwd_kernel(qd_ref, w_ref, u_ref, kd_ref, p_ref, a_ref, s0_ref, o_ref, states_ref, sn_ref,
                *, chunk: int):  # fmt: skip
  dk = qd_ref.shape[-1]
  n = a_ref.shape[0] // dk

  def body(i, S):
    rows, state_rows = pl.ds(i * chunk, chunk), pl.ds(i * dk, dk)
    states_ref[state_rows, :] = S
    v_new = u_ref[rows, :] - _dot(w_ref[rows, :], S, (1, 0))  # [c, bv]
    o = _dot(qd_ref[rows, :], S, (1, 0)) + _dot(p_ref[rows, :], v_new, (1, 0))
    o_ref[rows, :] = o.astype(o_ref.dtype)
    return a_ref[state_rows, :] * S + _dot(kd_ref[rows, :], v_new, (0, 0))

  sn_ref[...] = jax.lax.fori_loop(0, n, body, s0_ref[...].astype(jnp.float32))


def _bwd_kernel(
  qd_ref, w_ref, u_ref, kd_ref, p_ref, a_ref, states_ref, do_ref, dsn_ref,
  dqd_ref, dw_ref, du_ref, dkd_ref, dp_ref, da_ref, ds0_ref, *, chunk: int,
):  # fmt: skip
  dk = qd_ref.shape[-1]
  n = a_ref.shape[0] // dk

  def body(t, dS):
    i = n - 1 - t
    rows, state_rows = pl.ds(i * chunk, chunk), pl.ds(i * dk, dk)
    S, do = states_ref[state_rows, :], do_ref[rows, :]
    qd, w, kd = qd_ref[rows, :], w_ref[rows, :], kd_ref[rows, :]
    v_new = u_ref[rows, :] - _dot(w, S, (1, 0))
    dv_new = _dot(p_ref[rows, :], do, (0, 0)) + _dot(kd, dS, (1, 0))  # [c, bv]
    du_ref[rows, :] = dv_new
    dw_ref[rows, :] = -_dot(dv_new, S, (1, 1))
    dqd_ref[rows, :] = _dot(do, S, (1, 1))
    dkd_ref[rows, :] = _dot(v_new, dS, (1, 1))
    dp_ref[rows, :] = _dot(do, v_new, (1, 1))
    da_ref[state_rows, :] = jnp.sum(S * dS, axis=1, keepdims=True)
    return a_ref[state_rows, :] * dS + _dot(qd, do, (0, 0)) - _dot(w, dv_new, (0, 0))

  ds0_ref[...] = jax.lax.fori_loop(0, n, body, dsn_ref[...].astype(jnp.float32))


def _specs(rows, dk, state_rows, c, block_v):
  whole = lambda width: pl.BlockSpec((None, None, rows, width), lambda bi, hi, j: (bi, hi, 0, 0))
  values = lambda r: pl.BlockSpec((None, None, r, block_v), lambda bi, hi, j: (bi, hi, 0, j))
  share = lambda r, width: pl.BlockSpec(  # this value block's share of a sum over v
    (None, None, None, r, width), lambda bi, hi, j: (bi, hi, j, 0, 0)
  )
  return dict(
    keys=whole(dk),
    P=whole(c),
    a=pl.BlockSpec((None, None, state_rows, 1), lambda bi, hi, j: (bi, hi, 0, 0)),
    values=values(rows),
    states=values(state_rows),
    state=values(dk),
    share=share,
  )


@functools.partial(jax.jit, static_argnames=("chunk", "block_v", "interpret"))
def forward(qd, w, u, kd, P, a, state, *, chunk: int, block_v: int, interpret: bool = False):
  """-> (o [b, h, n*c, v], states entering each chunk [b, h, n*k, v], final state [b, h, k, v])."""
  b, h, rows, dk = qd.shape
  dv, state_rows = u.shape[-1], a.shape[2]
  sp = _specs(rows, dk, state_rows, chunk, block_v)
  f32 = jnp.float32
  return pl.pallas_call(
    functools.partial(_fwd_kernel, chunk=chunk),
    grid=(b, h, dv // block_v),
    in_specs=[sp["keys"], sp["keys"], sp["values"], sp["keys"], sp["P"], sp["a"], sp["state"]],
    out_specs=[sp["values"], sp["states"], sp["state"]],
    out_shape=[
      jax.ShapeDtypeStruct((b, h, rows, dv), f32),
      jax.ShapeDtypeStruct((b, h, state_rows, dv), f32),
      jax.ShapeDtypeStruct((b, h, dk, dv), f32),
    ],
    interpret=interpret,
    compiler_params=triton_params(**COMPILER),
  )(qd, w, u, kd, P, a, state)


@functools.partial(jax.jit, static_argnames=("chunk", "block_v", "interpret"))
def backward(qd, w, u, kd, P, a, states, do, dstate, *, chunk: int, block_v: int,
             interpret: bool = False):  # fmt: skip
  """-> per value block shares of (dqd, dw [b, h, nv, n*c, k]), du [b, h, n*c, v],
  shares of (dkd, dP [b, h, nv, n*c, c], da [b, h, nv, n*k, 1]), d initial state."""
  b, h, rows, dk = qd.shape
  dv, state_rows = u.shape[-1], a.shape[2]
  nv = dv // block_v
  sp = _specs(rows, dk, state_rows, chunk, block_v)
  f32 = jnp.float32
  shares = lambda r, width: jax.ShapeDtypeStruct((b, h, nv, r, width), f32)
  return pl.pallas_call(
    functools.partial(_bwd_kernel, chunk=chunk),
    grid=(b, h, nv),
    in_specs=[
      sp["keys"],
      sp["keys"],
      sp["values"],
      sp["keys"],
      sp["P"],
      sp["a"],
      sp["states"],
      sp["values"],
      sp["state"],
    ],  # fmt: skip
    out_specs=[
      sp["share"](rows, dk),
      sp["share"](rows, dk),
      sp["values"],
      sp["share"](rows, dk),
      sp["share"](rows, chunk),
      sp["share"](state_rows, 1),
      sp["state"],
    ],  # fmt: skip
    out_shape=[
      shares(rows, dk),
      shares(rows, dk),
      jax.ShapeDtypeStruct((b, h, rows, dv), f32),
      shares(rows, dk),
      shares(rows, chunk),
      shares(state_rows, 1),
      jax.ShapeDtypeStruct((b, h, dk, dv), f32),
    ],  # fmt: skip
    interpret=interpret,
    compiler_params=triton_params(**COMPILER),
  )(qd, w, u, kd, P, a, states, do, dstate)
