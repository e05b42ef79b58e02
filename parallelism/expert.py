"""Expert parallelism: routed experts split over the mesh's expert axis, tokens
sent to their experts' devices and back by all-to-all inside `shard_map`.

Each of the n devices along the expert axis holds E/n whole experts (experts
are laid out contiguously: expert i lives on device i // (E/n)) and its own
shard of the tokens. The model supplies the FFN math; this module only moves
rows.

dropless: a device sorts its (token, slot) pairs by expert, which also groups
them by destination, packs them into a [n, S, e] send buffer, and one
all_to_all delivers them. The receiver sorts the n*S rows it got by local
expert, runs the grouped FFN, and a second all_to_all takes the outputs home.
With S = t*k (every pair could go to one device) nothing is ever dropped;
`moe.ep_capacity_factor` > 0 sizes S at that factor times the mean t*k/n and
drops (and counts) the overflow, trading exactness for n-times smaller buffers.
Every move of rows (packing, the local sort, its undoing, the trip home) is a
gather whose gradient is the inverse gather (`grouped.move`), never a scatter:
XLA runs scatters as slow read-modify-writes, and XLA:CPU widens bfloat16 ones
to 32 bits (DeepSeek-V3 on fsdp=32,expert=8: 71.0 -> 67.5 GiB per device).
capacity: each device fills its own [E, C, e] capacity buffer from its tokens
(C from its local token count, as in GShard); all_to_all hands every device
the [n, E/n, C, e] slices of its experts.

The expert FFN's hidden dim may also be split (over `tensor`): each device
then holds partial down projections, summed by psum before the trip home.
Expert weights enter the shard_map as stored, embed dim split over fsdp, and
each layer all-gathers only its device's E/n experts there (ZeRO-3, never all
E), cast to the compute dtype first (bfloat16 moves half the bytes); their
gradients are reduce-scattered back in the weights' float32. Gathering the
weights beats keeping the embed/hidden dims split and gathering tokens instead
whenever a device's buffer rows (c t k of width e, c the buffer factor) outnumber
its experts' 3 l f rows of width e: DeepSeek-V3 on expert=64, 65,536 vs 24,576.
Buffers are padded because XLA:CPU has no ragged all-to-all. Letters: t local
tokens, k slots, e embed, f expert hidden, n devices on the expert axis, S rows
per (source, destination) pair, E experts, l = E/n.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from modeling.layers import grouped
from parallelism import rules


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where an MoE layer's tokens and experts live on the active mesh."""

  mesh: jax.sharding.Mesh
  tokens: tuple[str, ...]  # mesh axes splitting the token rows
  experts: tuple[str, ...]  # mesh axes splitting the experts (the EP group)
  hidden: tuple[str, ...]  # mesh axes splitting each expert's hidden dim
  embed: tuple[str, ...] = ()  # mesh axes splitting the stored weights' embed dim

  @property
  def n(self) -> int:
    return math.prod(self.mesh.shape[a] for a in self.experts)

  def weight_spec(self, axes: tuple) -> P:
    """In-spec of one expert weight: experts, hidden and embed split as stored."""
    split = {"experts": self.experts, "expert_mlp": self.hidden, "embed": self.embed}
    return P(*(split.get(a) or None for a in axes))


def layout(num_experts: int, hidden_dim: int, num_tokens: int, embed_dim: int) -> Layout | None:
  """The EP layout under the active mesh, or None when experts are not split."""
  ctx = rules.active()
  if ctx is None:
    return None
  mesh, table = ctx
  shape = (num_experts, embed_dim, hidden_dim)
  experts, embed, hidden = map(
    rules.spec_axes, rules.partition_spec(("experts", "embed", "expert_mlp"), shape, mesh, table)
  )
  if not experts:
    return None
  tokens = rules.spec_axes(rules.token_spec((num_tokens,), mesh, table)[0])
  # A hidden split must not also split tokens: the psum would mix different tokens.
  hidden = tuple(a for a in hidden if a not in tokens)
  return Layout(mesh, tokens, experts, hidden, embed)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _gather(w, axes: tuple, dim: int, dtype):
  """One weight's shard along `dim` -> whole along dim, cast to dtype before the
  all-gather; the gradient goes back by reduce-scatter in w's own dtype."""
  return jax.lax.all_gather(w.astype(dtype), axes, axis=dim, tiled=True)


def _gather_fwd(w, axes, dim, dtype):
  return _gather(w, axes, dim, dtype), jnp.zeros((0,), w.dtype)  # w's dtype, for the grads


def _gather_bwd(axes, dim, dtype, like, g):
  return (jax.lax.psum_scatter(g.astype(like.dtype), axes, scatter_dimension=dim, tiled=True),)


_gather.defvjp(_gather_fwd, _gather_bwd)


def _run(lay: Layout, body, weights: dict, weight_axes: dict, x, indices, scale, dtype):
  """shard_map of body(weights, x, indices, scale, psum_hidden) -> (out [t, k, e], dropped).

  Weights split along embed are gathered inside, in `dtype` (None: their own)."""
  tok = P(lay.tokens or None)
  has_scale = scale is not None
  scale = scale.reshape(indices.shape) if has_scale else jnp.zeros(indices.shape, x.dtype)
  # Inside a scan the arrays are one layer's slices: the leading `layers` name drops.
  axes = {n: weight_axes[n][-w.ndim :] for n, w in weights.items()}

  def local(w, x, indices, scale):
    if lay.embed:
      w = {
        n: _gather(a, lay.embed, axes[n].index("embed"), dtype or a.dtype)
        if "embed" in axes[n] else a
        for n, a in w.items()
      }  # fmt: skip
    reduce = (lambda y: jax.lax.psum(y, lay.hidden)) if lay.hidden else (lambda y: y)
    out, dropped = body(w, x, indices, scale.reshape(-1, 1) if has_scale else None, reduce)
    if lay.tokens:
      dropped = jax.lax.pmean(dropped, lay.tokens)
    return out, dropped

  specs = {n: lay.weight_spec(a) for n, a in axes.items()}
  # check_vma off: inside the pipeline's vmap over `stage` (parallelism/pipeline.py)
  # jax 0.10.2's replication check rejects these out_specs as possibly varying over
  # `stage`; the step's loss and gradients there equal one device's (test_pipeline).
  return jax.shard_map(
    local, mesh=lay.mesh, in_specs=(specs, tok, tok, tok), out_specs=(tok, P()), check_vma=False
  )(weights, x, indices, scale)


def _exchange(buf, lay: Layout):
  """[n, ...] -> [n, ...]: slice j goes to device j; slice j of the result came from j."""
  return jax.lax.all_to_all(buf, lay.experts, 0, 0, tiled=True)


def _inverse(perm):
  """The permutation that undoes perm: _inverse(p)[p[i]] = i."""
  return jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))


def dropless(
  lay: Layout, ffn, weights, weight_axes, x, indices, scale, *, num_experts, buffer_factor,
  dtype=None,
):  # fmt: skip
  """Per-pair outputs [t, k, e] (sharded like x) and the dropped fraction.

  ffn(w, rows [m, e] sorted by local expert, sizes [l], local ids [m], reduce) -> [m, e];
  rows past sum(sizes) are padding and their outputs are ignored.
  """
  n = lay.n
  l = num_experts // n

  def body(w, x, indices, scale, reduce):
    t, k = indices.shape
    m, e = t * k, x.shape[-1]
    cap = m if buffer_factor <= 0 else min(m, math.ceil(buffer_factor * m / n))
    flat = indices.reshape(-1)
    order = jnp.argsort(flat, stable=True)  # pairs by expert = by destination device
    rank = _inverse(order)  # each pair's place in expert order
    counts = jnp.bincount(flat // l, length=n)
    starts = jnp.cumsum(counts) - counts
    dest = flat // l
    slot = rank - starts[dest]  # each pair's place in its destination's rows
    keep = slot < cap
    pos = jnp.where(keep, dest * cap + slot, n * cap)  # its send-buffer row; n*cap: dropped
    b = jnp.arange(n * cap)
    filled = b % cap < counts[b // cap]
    src = jnp.where(filled, order[jnp.minimum(starts[b // cap] + b % cap, m - 1)], m)
    pairs = jnp.repeat(x, k, axis=0)
    pairs = pairs if scale is None else pairs * scale
    send = grouped.move(pairs, src, pos).reshape(n, cap, e)
    ids = jnp.where(filled, flat[jnp.minimum(src, m - 1)] % l, l).reshape(n, cap)
    recv, ids = _exchange(send, lay).reshape(n * cap, e), _exchange(ids, lay).reshape(-1)
    local_order = jnp.argsort(ids, stable=True)  # by local expert; padding (id l) last
    local_rank = _inverse(local_order)
    local_ids = ids[local_order]
    sizes = jnp.bincount(ids, length=l).astype(jnp.int32)
    out = ffn(w, grouped.move(recv, local_order, local_rank), sizes, local_ids, reduce)
    out = jnp.where((local_ids < l)[:, None], out, 0).astype(x.dtype)
    out = grouped.move(out, local_rank, local_order).reshape(n, cap, e)
    back = grouped.move(_exchange(out, lay).reshape(n * cap, e), pos, src)  # [m, e]
    return back.reshape(t, k, e), 1.0 - jnp.mean(keep.astype(jnp.float32))

  return _run(lay, body, weights, weight_axes, x, indices, scale, dtype)


def capacity(lay: Layout, fill, ffn, weights, weight_axes, x, indices, scale, dtype=None):
  """Capacity dispatch with each device's buffer split by expert owner.

  fill(x, indices, scale, run) -> (out [t, k, e], dropped) builds the local
  [E, C, e] buffer and calls run(buf) for the expert outputs;
  ffn(w, buf [l, C', e], reduce) -> [l, C', e] runs the local experts.
  """
  n = lay.n

  def body(w, x, indices, scale, reduce):
    def run(buf):
      E, c, e = buf.shape
      l = E // n
      recv = _exchange(buf.reshape(n, l, c, e), lay)  # [source, l, c, e]
      out = ffn(w, recv.transpose(1, 0, 2, 3).reshape(l, n * c, e), reduce)
      out = out.reshape(l, n, c, e).transpose(1, 0, 2, 3)
      return _exchange(out, lay).reshape(E, c, e)

    return fill(x, indices, scale, run)

  return _run(lay, body, weights, weight_axes, x, indices, scale, dtype)
