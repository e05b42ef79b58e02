"""`state_pass`: the Pallas kernels behind a custom VJP, or the reference.

Same contract as `reference.state_pass`. `implementation`: "pallas" (the
kernels; `interpret=True` runs them on CPU), "reference", or None: Pallas on
GPU/TPU, the reference elsewhere. `block_v` (value columns per program) must
divide v; it is cut to v when larger.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.chunked_delta import kernel, reference
from pallas_kernels.flash_attention.ops import default_implementation

IMPLEMENTATIONS = ("pallas", "reference")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  chunk: int
  block_v: int
  interpret: bool


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _pass(qd, w, u, kd, P, a, state, cfg: KernelConfig):
  """Flat layouts of kernel.py -> (o [b, h, n*c, v], final state [b, h, k, v])."""
  return _pass_fwd(qd, w, u, kd, P, a, state, cfg)[0]


def _pass_fwd(qd, w, u, kd, P, a, state, cfg):
  o, states, final = kernel.forward(
    qd, w, u, kd, P, a, state, chunk=cfg.chunk, block_v=cfg.block_v, interpret=cfg.interpret
  )
  return (o, final), (qd, w, u, kd, P, a, states)


def _pass_bwd(cfg, res, cotangents):
  do, dfinal = cotangents
  dqd, dw, du, dkd, dP, da, dstate = kernel.backward(
    *res, do.astype(jnp.float32), dfinal.astype(jnp.float32), chunk=cfg.chunk,
    block_v=cfg.block_v, interpret=cfg.interpret,
  )  # fmt: skip
  add = lambda shares: jnp.sum(shares, axis=2)  # over value blocks
  return add(dqd), add(dw), du, add(dkd), add(dP), add(da), dstate


_pass.defvjp(_pass_fwd, _pass_bwd)


def state_pass(
  qd, w, u, kd, P, a, state, *, implementation=None, interpret: bool = False,
  block_v: int = 32, unroll: bool = False,
):  # fmt: skip
  """(o [b, h, n, c, v], final state [b, h, k, v]); see reference.state_pass.
  unroll: the reference's loop, unrolled (for XLA's cost analysis)."""
  implementation = implementation or ("pallas" if interpret else default_implementation())
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} must be one of {IMPLEMENTATIONS}")
  if implementation == "reference":
    return reference.state_pass(qd, w, u, kd, P, a, state, unroll=unroll)
  b, h, n, c, dk = qd.shape
  dv = u.shape[-1]
  block_v = min(block_v, dv)
  if dv % block_v:
    raise ValueError(f"block_v={block_v} must divide the value dim {dv}")
  f32 = jnp.float32
  rows = lambda x: x.astype(f32).reshape(b, h, n * c, x.shape[-1])
  cfg = KernelConfig(int(c), int(block_v), bool(interpret))
  o, final = _pass(
    rows(qd), rows(w), rows(u), rows(kd), rows(P), a.astype(f32).reshape(b, h, n * dk, 1),
    state.astype(f32), cfg,
  )  # fmt: skip
  return o.reshape(b, h, n, c, dv), final
