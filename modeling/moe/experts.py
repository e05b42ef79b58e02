"""Stacked routed experts and the two ways to send tokens to them.

`dropless`: sort the (token, slot) pairs by expert and run one grouped matmul
per projection (`grouped`: ragged_dot or padded blocks); nothing is dropped.
`capacity`: each expert takes at most C = ceil(capacity_factor * t * k / E)
pairs, first come first served in (token, slot) order; later pairs are dropped
(contribute 0). Fixed shapes, batched einsum over an [E, C, e] buffer.
Each pair's output is weighted by its routing weight, or, with `scale_inputs`
(Llama 4), its input is: y = sum_k FFN_k(w_k * x).
Under a mesh whose `expert` axis splits the experts, both modes run expert
parallel (`parallelism.expert`): the same FFN math on each device's experts,
with tokens moved there and back by all-to-all.
Letters: t tokens, e embed, x experts (E), f expert mlp, k slots, c capacity.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from modeling.layers import fp8, grouped, mlp, params
from modeling.moe.config import MoeConfig
from parallelism import expert


def _glu(act):  # the dense MLP's activations, gating the up projection
  return lambda gate, up, limit: act(gate) * up


def _clamped_swiglu(gate, up, limit):
  gate = jnp.minimum(gate, limit)
  up = jnp.clip(up, -limit, limit)
  return (up + 1.0) * gate * jax.nn.sigmoid(1.702 * gate)


ACTIVATIONS = {
  **{name: _glu(act) for name, act in mlp.ACTIVATIONS.items()},
  "clamped_swiglu": _clamped_swiglu,
}


class Experts(nnx.Module):
  def __init__(self, cfg: MoeConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.cfg = cfg
    E, e, f, std = cfg.num_experts, cfg.embed_dim, cfg.expert_mlp_dim, cfg.init_std
    in_axes, out_axes = ("experts", "embed", "expert_mlp"), ("experts", "expert_mlp", "embed")
    self.gate_proj = params.normal(rngs, (E, e, f), in_axes, std, param_dtype)
    self.up_proj = params.normal(rngs, (E, e, f), in_axes, std, param_dtype)
    self.down_proj = params.normal(rngs, (E, f, e), out_axes, std, param_dtype)
    if cfg.expert_bias:
      self.gate_bias = params.constant(0.0, (E, f), ("experts", "expert_mlp"), param_dtype)
      self.up_bias = params.constant(0.0, (E, f), ("experts", "expert_mlp"), param_dtype)
      self.down_bias = params.constant(0.0, (E, e), ("experts", "embed"), param_dtype)

  def _weights(self) -> tuple[dict, dict]:
    """({name: array}, {name: logical axes}) of the expert projections and biases."""
    names = ["gate_proj", "up_proj", "down_proj"]
    names += ["gate_bias", "up_bias", "down_bias"] if self.cfg.expert_bias else []
    variables = [getattr(self, n) for n in names]
    arrays = {n: v[...] for n, v in zip(names, variables)}
    return arrays, {n: params.logical_axes(v) for n, v in zip(names, variables)}

  def _grouped(self, w, xs, sizes, expert_ids, reduce=lambda y: y):
    """xs [m, e] sorted by expert, sizes [E] -> [m, e]: grouped matmuls run by
    `grouped.layout` (compute.moe_matmul); rows pad once, unpad once.

    reduce sums partial down projections when the hidden dim is split (EP).
    """
    cfg, dt = self.cfg, xs.dtype
    if cfg.fp8 is None:
      lay = grouped.layout(cfg.matmul, sizes, xs.shape[0], expert_ids)
      mm = lambda a, name: lay.matmul(a, w[name], dtype=dt)
    else:  # FP8 scales tile the sorted rows: each matmul pads and unpads itself
      lay = grouped.Ragged(sizes, expert_ids)
      mm = lambda a, name: fp8.ragged_matmul(a, w[name], sizes, cfg.fp8, cfg.matmul)
    bias = lambda name: lay.bias(w[name].astype(dt))
    rows = lay.pad(xs)
    gate, up = mm(rows, "gate_proj"), mm(rows, "up_proj")  # [.., f]
    if cfg.expert_bias:
      gate, up = gate + bias("gate_bias"), up + bias("up_bias")
    out = reduce(mm(ACTIVATIONS[cfg.activation](gate, up, cfg.swiglu_limit), "down_proj"))
    out = out + bias("down_bias") if cfg.expert_bias else out
    return lay.unpad(out)

  def _batched(self, w, buf, reduce=lambda y: y):
    """buf [E, c, e] -> [E, c, e], every expert on its own slice."""
    dt, q = buf.dtype, self.cfg.fp8
    if q is None:
      mm = lambda a, name: jnp.einsum("xce,xef->xcf", a, w[name].astype(dt))
    else:
      mm = lambda a, name: fp8.batched_matmul(a, w[name], q)
    bias = lambda name: w[name].astype(dt)[:, None, :]  # [E, 1, n]
    gate, up = mm(buf, "gate_proj"), mm(buf, "up_proj")
    if self.cfg.expert_bias:
      gate, up = gate + bias("gate_bias"), up + bias("up_bias")
    h = ACTIVATIONS[self.cfg.activation](gate, up, self.cfg.swiglu_limit)
    out = reduce(mm(h, "down_proj"))
    return out + bias("down_bias") if self.cfg.expert_bias else out

  def __call__(self, x, weights, indices):
    """x [t, e], weights/indices [t, k] -> (y [t, e] in x.dtype, dropped_frac).

    Under a mesh whose expert axis splits the experts (`parallelism.expert`)
    tokens travel to their experts' devices; otherwise XLA places the work.
    """
    cfg = self.cfg
    scale = None
    if cfg.scale_inputs:  # each pair's input is weighted; outputs are summed as they are
      scale, weights = weights.reshape(-1, 1).astype(x.dtype), jnp.ones_like(weights)
    w, axes = self._weights()
    ep = expert.layout(cfg.num_experts, cfg.expert_mlp_dim, x.shape[0], cfg.embed_dim)
    gather_dtype = None if cfg.fp8 else x.dtype  # FP8 quantizes from the float32 weights
    if ep is not None and cfg.dispatch == "capacity":
      fill = self._capacity_dispatch
      out, dropped = expert.capacity(
        ep, fill, self._batched, w, axes, x, indices, scale, gather_dtype
      )
    elif ep is not None:
      out, dropped = expert.dropless(
        ep, self._grouped, w, axes, x, indices, scale,
        num_experts=cfg.num_experts, buffer_factor=cfg.ep_capacity_factor, dtype=gather_dtype,
      )  # fmt: skip
    elif cfg.dispatch == "capacity":
      out, dropped = self._capacity_dispatch(x, indices, scale, lambda buf: self._batched(w, buf))
    else:
      out, dropped = self._dropless_dispatch(w, x, indices, scale), jnp.zeros((), jnp.float32)
    y = jnp.einsum("tke,tk->te", out.astype(jnp.float32), weights.astype(jnp.float32))
    return y.astype(x.dtype), dropped

  def _dropless_dispatch(self, w, x, indices, scale=None):
    """x [t, e], indices [t, k], scale [t*k, 1] or None -> per-pair outputs [t, k, e]."""
    t, k = indices.shape
    flat = indices.reshape(-1)  # [t*k]
    order = jnp.argsort(flat, stable=True)  # pairs grouped by expert
    expert_ids = flat[order]
    sizes = jnp.bincount(flat, length=self.cfg.num_experts).astype(jnp.int32)  # [E]
    rows = x[order // k] if scale is None else x[order // k] * scale[order]
    out = self._grouped(w, rows, sizes, expert_ids)  # [t*k, e], sorted
    return out[jnp.argsort(order)].reshape(t, k, -1)

  def capacity(self, t: int) -> int:
    cfg = self.cfg
    return math.ceil(cfg.capacity_factor * t * cfg.top_k / cfg.num_experts)

  def _capacity_dispatch(self, x, indices, scale, run):
    """-> (per-pair outputs [t, k, e] with dropped pairs zeroed, dropped fraction).

    run(buf [E, c, e]) -> [E, c, e] applies the experts to the filled buffer.
    """
    t, k = indices.shape
    E, c = self.cfg.num_experts, self.capacity(t)
    flat = indices.reshape(-1)  # [t*k]
    onehot = jax.nn.one_hot(flat, E, dtype=jnp.int32)  # [t*k, E]
    position = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)  # [t*k]
    keep = position < c
    slot = jnp.where(keep, position, c)  # c is out of bounds: dropped by the scatter
    pairs = jnp.repeat(x, k, axis=0)  # [t*k, e]
    pairs = pairs if scale is None else pairs * scale
    buf = jnp.zeros((E, c, x.shape[-1]), x.dtype).at[flat, slot].set(pairs, mode="drop")
    out = run(buf)[flat, jnp.minimum(slot, c - 1)]  # [t*k, e]
    out = jnp.where(keep[:, None], out, 0.0)
    dropped = 1.0 - jnp.mean(keep.astype(jnp.float32))
    return out.reshape(t, k, -1), dropped
