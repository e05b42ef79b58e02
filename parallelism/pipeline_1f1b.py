"""The 1F1B pipeline schedule (`compute.pipeline=1f1b`; interleaved with
compute.virtual_stages > 1): each micro-batch's backward starts as soon as its
forward has left the last stage, so a stage holds a bounded number of
micro-batches in flight, not all of them.

The forward, the loss and the backward run in one loop of ticks. Each tick every
stage runs one chunk forward (job j = t - s) and one chunk backward (job t - D -
(S - 1 - s), D = virtual x stages - 1), then hands its output to the next stage
and its input's cotangent to the previous one (`ppermute`s over `stage`, as in
parallelism/pipeline.py). Forward jobs go in groups of `stages` micro-batches
through every round (Megatron's interleaved order; one round: plain 1F1B);
backward jobs mirror them. When a micro-batch leaves the last stage, its part of
the loss after the pipeline (tail layers, final norm, MTP, head and CE, with the
whole batch's denominators: `post_fn`) runs with its VJP in the same tick, spread
over every device like the layers outside the pipeline, and its cotangent starts
the backward on the last stage at once.

Each stage keeps the inputs of the chunks it has run forward until it runs them
backward: at most 2 x virtual x stages - 1 of them (a ring buffer), whatever the
micro-batch count; the backward runs the chunk's forward again (under its remat
policy) for its VJP: 4 layer passes a step, 5 with compute.remat=full.

The loop has three phases of ticks: forward only (the first D), forward and
backward, backward only (the last D); as all stages run in lockstep, it takes as
long as the forward-then-backward loop, bubble (stages - 1) / (micro-batches x
virtual), and holds far less.

Everything is computed in the forward of a `custom_vjp` (the loss and every
gradient); its backward scales the gradients by the loss's cotangent. The
pipelined layers' stats reach the loss linearly (MoE balance terms, router z,
indexer KL, each with a weight and 1 / micro-batches): `stat_weights` gives
their constant cotangents.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from parallelism import pipeline, rules
from parallelism.pipeline import AXIS, Schedule


def _jobs(sched: Schedule):
  """(forward job -> (round, micro-batch), backward job -> (round, micro-batch,
  its forward job)): micro-batches in groups of `stages`, each through every round."""
  S, V = sched.stages, sched.virtual

  def forward(j):
    g, i = j // (S * V), j % (S * V)
    return i // S, g * S + i % S

  def backward(j):
    g, i = j // (S * V), j % (S * V)
    r = V - 1 - i // S
    return r, g * S + i % S, g * S * V + r * S + i % S

  return forward, backward


def in_flight(sched: Schedule) -> int:
  """Chunk inputs a stage keeps at most (the ring buffer's slots)."""
  return min(2 * sched.virtual * sched.stages - 1, sched.microbatches * sched.virtual)


def _at(tree, i):
  return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree)


def _put(tree, part, i, valid=True):
  """tree[i] = part where valid (else unchanged)."""

  def one(a, p):
    old = jax.lax.dynamic_index_in_dim(a, i, keepdims=False)
    return jax.lax.dynamic_update_index_in_dim(a, jnp.where(valid, p, old), i, 0)

  return jax.tree.map(one, tree, part)


def _inexact(a) -> bool:
  return jnp.issubdtype(a.dtype, jnp.inexact)


def _add(acc, d, valid):
  """acc + d where valid, for float leaves (integer leaves have no gradient)."""
  return jax.tree.map(lambda a, g: a + jnp.where(valid, g, 0) if _inexact(a) else a, acc, d)


def _cotangent(stats, stat_weights: dict):
  """The constant cotangent of a chunk's stats: their weight in the loss by name."""

  def one(path, a):
    if not _inexact(a):
      return np.zeros(a.shape, jax.dtypes.float0)
    return jnp.full(a.shape, stat_weights.get(pipeline.stat_name(path), 0.0), a.dtype)

  return jax.tree_util.tree_map_with_path(one, stats)


def _fold_post(acc, out):
  return jax.tree_util.tree_map_with_path(lambda p, o, n: pipeline.fold(p, o, n, True), acc, out)


def _empty_post(shapes):
  return jax.tree_util.tree_map_with_path(lambda p, s: pipeline.empty(p, s.shape, s.dtype), shapes)


def run(chunk_fn, post_fn, weights, rest, carry: dict, sched: Schedule, stat_weights: dict):
  """(loss, out) of the pipelined layers and what follows them, over the step's
  micro-batches, with every gradient computed on the way (a custom_vjp).

  chunk_fn(weights [k, ...], carry, chunk index) -> (x, stats [k, ...]): as
  `pipeline.run`'s. post_fn(weights, rest, carry of one micro-batch with x its
  pipelined output, micro-batch index) -> (loss, out): that micro-batch's part of the loss
  from the pipeline's output on (`out`: what to report, summed over micro-batches,
  or maxed for `pipeline.MAXED` names). weights: [P, ...] stacked params; rest:
  post_fn's params; carry["x"]: the pipeline's input [B, ...]. Differentiable in
  weights, rest and carry["x"]. Returns (loss, (out summed, stats [P, ...] of the
  pipelined layers as `pipeline.run` gives them)); loss includes the stats' terms,
  sum of stat_weights[name] x stat (the weights per micro-batch)."""
  extras = {k: v for k, v in carry.items() if k != "x"}

  @jax.custom_vjp
  def loss(weights, rest, x):
    return _Loop(chunk_fn, post_fn, weights, rest, dict(extras, x=x), sched, stat_weights).run()[0]

  def forward(weights, rest, x):
    return _Loop(chunk_fn, post_fn, weights, rest, dict(extras, x=x), sched, stat_weights).run()

  def backward(grads, g):
    scale = lambda d: None if d is None else (d * g[0]).astype(d.dtype)
    return jax.tree.map(scale, grads, is_leaf=lambda d: d is None)

  loss.defvjp(forward, backward)
  return loss(weights, rest, carry["x"])


def _after(done, *values):
  """values, made to wait for `done`: each part of a tick (forward jobs, the loss,
  the hand-off, backward jobs, the hand-off back) takes a data dependency on the
  part before, a select on whether the first element of each of `done`'s leaves is
  finite. Without it the compiler may run the parts side by side: XLA:CPU's
  runtime then runs their collectives in a different order on different devices
  and deadlocks, and the tick's peak is every part's working memory at once
  (DeepSeek-V3's fit row: 63.4 GiB against 46.3). An optimization barrier does not
  survive XLA:CPU's compiler; this does."""
  firsts = [a[(0,) * a.ndim].astype(jnp.float32) for a in jax.tree.leaves(done) if a.size]
  if not firsts:
    return values
  ok = jnp.all(jnp.isfinite(jnp.stack(firsts)))
  return jax.tree.map(lambda v: jnp.where(ok, v, jnp.zeros_like(v)), values)


def _zero_grads(tree):
  return jax.tree.map(lambda a: jnp.zeros_like(a) if _inexact(a) else a, tree)


class _Loop:
  """One step's 1F1B loop over the ticks (see `run` for the arguments)."""

  def __init__(self, chunk_fn, post_fn, weights, rest, carry, sched: Schedule, stat_weights):
    self.chunk_fn, self.post_fn, self.sched, self.stat_weights = (
      chunk_fn,
      post_fn,
      sched,
      stat_weights,
    )
    self.weights, self.rest = weights, rest
    S, V, M = sched.stages, sched.virtual, sched.microbatches
    self.D, self.K = V * S - 1, in_flight(sched)
    self.chunks = pipeline.to_chunks(weights, sched)
    self.inputs = pipeline.lead(jax.tree.map(lambda a: pipeline.split_rows(a, M), carry), None)
    self.active = rules.active()
    self.forward_job, self.backward_job = _jobs(sched)

  def travelling(self, m) -> dict:
    """Micro-batch m's positions and documents."""
    return {k: v[m] for k, v in self.inputs.items() if k != "x"}

  def chunk(self, w_r, x, r, m, s):
    """Stage s's chunk of round r on micro-batch m's x, under the rules inside a stage."""
    active = self.active
    inside = active and rules.activate(active[0], pipeline.without_stage(active[1]))
    with inside or contextlib.nullcontext():
      return self.chunk_fn(w_r, dict(self.travelling(m), x=x), r * self.sched.stages + s)

  def stage_forward(self, w, acc, ring, held, s, t):
    """Stage s's forward job at tick t: (output, stats folded in, its input kept)."""
    V, M = self.sched.virtual, self.sched.microbatches
    j = t - s
    valid = (j >= 0) & (j < M * V)
    j = jnp.clip(j, 0, M * V - 1)
    r, m = self.forward_job(j)
    x = jnp.where((s == 0) & (r == 0), self.inputs["x"][m], held)
    y, stats = self.chunk(_at(w, r), x, r, m, s)
    folded = jax.tree_util.tree_map_with_path(
      lambda p, o, n: pipeline.fold(p, o, n, valid), _at(acc, r), stats
    )
    return y, _put(acc, folded, r), _put(ring, x, j % self.K, valid)

  def stage_backward(self, w, grads, ring, dx0, cot, s, t, dy):
    """Stage s's backward job at tick t: (its input's cotangent, gradients added,
    input cotangents of micro-batches, a few elements of its weight gradient)."""
    S, V, M = self.sched.stages, self.sched.virtual, self.sched.microbatches
    j = t - self.D - (S - 1 - s)
    valid = (j >= 0) & (j < M * V)
    r, m, fj = self.backward_job(jnp.clip(j, 0, M * V - 1))
    if dy is not None:  # a micro-batch's loss ran this tick: its cotangent starts here
      cot = jnp.where((s == S - 1) & (r == V - 1), dy, cot)
    f = lambda w_r, x: self.chunk(w_r, x, r, m, s)
    (_, stats), vjp = jax.vjp(f, _at(w, r), _at(ring, fj % self.K))
    stat_cot = jax.tree.map(
      lambda c: c if c.dtype == jax.dtypes.float0 else jnp.where(valid, c, 0),
      _cotangent(stats, self.stat_weights),
    )
    dw, dx = vjp((jnp.where(valid, cot, 0), stat_cot))
    grads = _put(grads, _add(_at(grads, r), dw, valid), r)
    # The gradient's first elements, for `_after` (a slice of the written `grads`
    # would make the partitioner gather them whole).
    firsts = [a[(0,) * a.ndim] for a in jax.tree.leaves(dw) if _inexact(a) and a.size]
    return dx, grads, _put(dx0, dx, m, valid & (s == 0) & (r == 0)), firsts

  def loss(self, rest, y, t):
    """The loss after the pipeline of the micro-batch that left the last stage at
    tick t, and its VJP: (loss, out, rest's gradient, y's cotangent)."""
    _, m = self.forward_job(t - (self.sched.stages - 1))
    f = lambda rest, x: self.post_fn(self.weights, rest, dict(self.travelling(m), x=x), m)
    loss, vjp, out = jax.vjp(f, rest, y, has_aux=True)
    d_rest, dy = vjp(jnp.ones_like(loss))
    return loss, out, d_rest, dy

  def tick(self, c, t, forward: bool, loss: bool, backward: bool):
    """One tick: every stage's forward job, the loss of the micro-batch that left the
    last stage, the hand-off forward; every stage's backward job, the hand-off back."""
    S, ids = self.sched.stages, jnp.arange(self.sched.stages)
    c, dy, held = dict(c), None, None
    if forward:
      y, c["acc"], c["ring"] = jax.vmap(
        self.stage_forward, in_axes=(0, 0, 0, 0, 0, None), spmd_axis_name=AXIS
      )(self.chunks, c["acc"], c["ring"], c["held"], ids, t)
      done = (y, c["acc"])  # (the ring's write moves nothing between devices)
      if loss:
        l, out, d_rest, dy = self.loss(*_after(done, self.rest, y[S - 1]), t)
        c["total"] = c["total"] + l
        c["out"] = _fold_post(c["out"], out)
        c["d_rest"] = _add(c["d_rest"], d_rest, True)
        done = (done, l, out, d_rest, dy)
      (y,) = _after(done, y)
      c["held"] = held = pipeline.shift(pipeline.on_stages(y))
    if backward:
      # Every index the backward reads and writes comes from tb: its weights' gathers
      # wait for the hand-off (see _after).
      tb, cot, dy = _after(held, t, c["cot"], dy)
      dx, c["grads"], c["dx0"], dw = jax.vmap(
        self.stage_backward, in_axes=(0, 0, 0, 0, 0, 0, None, None), spmd_axis_name=AXIS
      )(self.chunks, c["grads"], c["ring"], c["dx0"], cot, ids, tb, dy)
      (dx,) = _after(dw, dx)
      c["cot"] = pipeline.shift(pipeline.on_stages(dx), -1)
    return c

  def ticks(self, c, start, length: int, *work):
    body = lambda c, t: (self.tick(c, t, *work), None)
    return jax.lax.scan(body, c, start + jnp.arange(length))[0]

  def start(self) -> dict:
    """The loop's carry before the first tick."""
    S, K, inputs = self.sched.stages, self.K, self.inputs
    per_stage = lambda a: pipeline.on_stages(jnp.broadcast_to(a, (S, *a.shape)))
    x0 = inputs["x"][0]  # real data in every slot: idle jobs compute on finite values
    post = lambda rest, x: self.post_fn(self.weights, rest, dict(self.travelling(0), x=x), 0)
    return {
      "held": per_stage(x0),
      "cot": per_stage(jnp.zeros_like(x0)),
      "ring": per_stage(jnp.broadcast_to(x0, (K, *x0.shape))),
      "acc": pipeline.accumulators(self.chunk_fn, self.chunks, inputs, self.sched),
      "grads": _zero_grads(self.chunks),
      "dx0": per_stage(jnp.zeros_like(inputs["x"])),
      "d_rest": _zero_grads(self.rest),
      "total": jnp.zeros((), jnp.float32),
      "out": _empty_post(jax.eval_shape(lambda r, x: post(r, x)[1], self.rest, x0)),
    }

  def run(self):
    """((loss, (out, stats)), gradients of (weights, rest, carry["x"]))."""
    S, V, M, D = self.sched.stages, self.sched.virtual, self.sched.microbatches, self.D
    # Forward only, then both (a micro-batch's loss in the ticks where one leaves the
    # last stage: the first `stages` of every stages x virtual), then backward only.
    c = self.ticks(self.start(), 0, D, True, False, False)
    if V == 1:
      c = self.ticks(c, D, M, True, True, True)
    else:

      def window(c, w):
        c = self.ticks(c, D + w * S * V, S, True, True, True)
        return self.ticks(c, D + w * S * V + S, (V - 1) * S, True, False, True), None

      c = jax.lax.scan(window, c, jnp.arange(M // S - 1))[0]
      c = self.ticks(c, D + (M // S - 1) * S * V, S, True, True, True)
    c = self.ticks(c, M * V + S - 1, D, False, False, True)
    weight = lambda p: self.stat_weights.get(pipeline.stat_name(p), 0.0)
    stats_loss = sum(
      weight(p) * a.sum()
      for p, a in jax.tree_util.tree_leaves_with_path(c["acc"])
      if pipeline.averaged(p)
    )
    periods = jax.tree.leaves(self.weights)[0].shape[0]
    stats = jax.tree_util.tree_map_with_path(
      lambda p, a: pipeline.finish(p, a, periods, M), c["acc"]
    )
    only_float = lambda tree: jax.tree.map(lambda a: a if _inexact(a) else None, tree)
    grads = (
      only_float(pipeline.from_chunks(c["grads"])),
      only_float(c["d_rest"]),
      pipeline.merge_rows(c["dx0"][0]),
    )
    return (c["total"] + stats_loss, (c["out"], stats)), grads
