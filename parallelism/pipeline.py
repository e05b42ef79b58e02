"""Pipeline parallelism: the scanned periods split over the mesh's `stage` axis.

The repeating layers (the decoder's stacked periods, [P, ...] params) are cut into
`stages x virtual` equal chunks of k = P / (stages x virtual) periods; stage s
runs chunks s, s + stages, s + 2 stages, ... (one per virtual stage, or round).
The step's batch is cut into `microbatches` (train.microbatches; micro-batch i
holds rows i, i + M, ..., as in gradient accumulation), and every iteration each
stage runs one chunk on one micro-batch, then hands its output to the next stage
with a `ppermute` over `stage` (a `shard_map` manual in that axis alone; the
stages' compute is a `vmap` over the stage axis under XLA's partitioner, so it
composes with data, fsdp, tensor, expert and context sharding inside a stage).
The last stage's output goes back to stage 0 for the next round, or is the
micro-batch's result after the last round.

Stage s works at iteration t on job j = t - s (round j // M, micro-batch j % M);
M x virtual + stages - 1 iterations run, so each stage idles (stages - 1) of
them: the bubble, (stages - 1) / (M x virtual) of the useful time. Rounds need
M >= stages (a micro-batch is back at stage 0 before round r + 1 needs it).

Schedules (`compute.pipeline`): "1f1b" (the default) runs the step's backward
inside its own loop, each micro-batch's as soon as it leaves the last stage
(parallelism/pipeline_1f1b.py); its forward without gradients (eval, QK-clip's
measuring forward) is this module's loop. "circular" (virtual rounds) and "gpipe"
(one round) are this loop with JAX's reverse of it as the backward: every forward
first, then every backward, so the step keeps what each iteration saves until the
backward reaches it: with compute.remat=full only each stage's chunk input (the
chunk's forward runs again in the backward, then each layer's once more: 5 layer
passes a step instead of full remat's 4); with other policies, what the policy
keeps of every layer of every micro-batch.

Per-layer stats come back as the layer scan's ([P, ...], layer order): expert
loads summed over micro-batches, max logits maxed, everything else (balance
terms, router z, dropped fraction, indexer KL) the mean over micro-batches, as
gradient accumulation gives them.

Weights: the stacked params keep their layer order ([P] split over `stage` in
contiguous blocks, so checkpoints and HF export do not depend on the pipeline).
With one round, stage s's block is its chunk; with several, the step regroups the
[P] blocks into chunks (one all-to-all over `stage` per step, and back for the
gradients).
"""

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from parallelism import rules

AXIS = "stage"
SCHEDULES = ("1f1b", "circular", "gpipe")
# How a per-layer stat of one micro-batch combines over the step's micro-batches.
SUMMED, MAXED = ("load",), ("max_logits",)


@dataclasses.dataclass(frozen=True)
class Schedule:
  stages: int
  virtual: int = 1  # rounds: chunks per stage
  microbatches: int = 1
  kind: str = "circular"

  @property
  def chunks(self) -> int:
    return self.stages * self.virtual

  @property
  def iterations(self) -> int:
    return self.microbatches * self.virtual + self.stages - 1

  @property
  def bubble(self) -> float:
    """Idle iterations per useful one: (stages - 1) / (micro-batches x virtual)."""
    return (self.stages - 1) / (self.microbatches * self.virtual)

  def describe(self) -> str:
    return (
      f"pipeline: {self.kind}, {self.stages} stages x {self.virtual} virtual, "
      f"{self.microbatches} micro-batches; bubble (stages-1)/(microbatches*virtual) = "
      f"{self.bubble:.1%}"
    )


def _layers(first: int, last: int) -> str:
  return f"layer {first}" if first == last else f"layers {first}-{last}"


def schedule(config, cfg, stages: int) -> Schedule | None:
  """The run's schedule on a mesh with `stages` stages (None for 1), or one
  ValueError naming the field and the fix. cfg: the model's DecoderConfig."""
  c, t = config.compute, config.train
  if stages <= 1:
    return None
  kind, virtual = c.pipeline, c.virtual_stages
  if kind not in SCHEDULES:
    raise ValueError(f"compute.pipeline={kind!r} is not valid; use one of {', '.join(SCHEDULES)}")
  if virtual < 1 or (kind == "gpipe" and virtual != 1):
    raise ValueError(
      f"compute.virtual_stages={virtual} must be >= 1, and 1 with compute.pipeline=gpipe "
      "(more rounds are the circular schedule)"
    )
  if cfg.stream is not None or config.objective.matformer_dims:
    raise ValueError(
      f"mesh.stage={stages} does not support per-layer stream inputs (Gemma 3n) or "
      "objective.matformer_dims; set mesh.stage=1"
    )
  if not cfg.num_periods:
    raise ValueError(
      f"mesh.stage={stages} splits the scanned layers; compute.scan_layers="
      f"{c.scan_layers} leaves none: set compute.scan_layers=scan"
    )
  n = stages * virtual
  if cfg.num_periods % n:
    first, period = cfg.prefix, cfg.period
    last = first + cfg.num_periods * period - 1
    ok = [d for d in range(1, cfg.num_periods + 1) if cfg.num_periods % d == 0]
    raise ValueError(
      f"mesh.stage={stages} x compute.virtual_stages={virtual} = {n} chunks do not divide "
      f"the {cfg.num_periods} scanned periods of {period} layer(s) ({_layers(first, last)}; "
      f"{_layers(0, first - 1) + ' run before' if first else 'nothing runs before'} the "
      f"pipeline, the rest after it): {cfg.num_periods / n:.2f} periods a chunk. Use "
      f"stage x virtual_stages in {ok}, or a model.num_layers whose scanned periods divide"
    )
  if t.microbatches < stages:
    raise ValueError(
      f"train.microbatches={t.microbatches} is fewer than mesh.stage={stages}: every stage "
      f"needs its own micro-batch in flight; set train.microbatches >= {stages} (the bubble "
      f"shrinks as it grows)"
    )
  if kind == "1f1b" and virtual > 1 and t.microbatches % stages:
    raise ValueError(
      f"train.microbatches={t.microbatches} with compute.pipeline=1f1b and "
      f"compute.virtual_stages={virtual} must be a multiple of mesh.stage={stages} (the "
      f"interleaved schedule runs micro-batches in groups of {stages}); set it to "
      f"{t.microbatches // stages * stages or stages} or {(t.microbatches // stages + 1) * stages}"
    )
  return Schedule(stages, virtual, t.microbatches, kind)


def split_rows(a, m: int):
  """[B, ...] -> [m, B / m, ...]: micro-batch i holds rows i, i + m, ... (each device
  keeps its own rows of a batch split in contiguous blocks)."""
  return a.reshape(a.shape[0] // m, m, *a.shape[1:]).swapaxes(0, 1)


def merge_rows(a):
  """The inverse of `split_rows`."""
  return a.swapaxes(0, 1).reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def lead(tree, axis):
  """Leading axis over `axis` (None: whole on every device), the rest left to the
  partitioner (no-op outside a mesh)."""
  ctx = rules.active()
  if ctx is None or ctx[0].shape.get(AXIS, 1) == 1:
    return tree
  mesh = ctx[0]

  def one(a):
    spec = P(axis, *(P.UNCONSTRAINED,) * (a.ndim - 1))
    return jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))

  return jax.tree.map(one, tree)


def on_stages(tree):
  return lead(tree, AXIS)


def shift(tree, step: int = 1):
  """Stage s's value goes to stage s + step, around the ring (step 1: the last
  stage's to stage 0; -1: the way back, stage 0's to the last)."""
  ctx = rules.active()
  if ctx is None or ctx[0].shape.get(AXIS, 1) == 1:  # one device: the same move as a roll
    return jax.tree.map(lambda a: jnp.roll(a, step, axis=0), tree)
  mesh, n = ctx[0], ctx[0].shape[AXIS]
  perm = [(s, (s + step) % n) for s in range(n)]
  move = lambda a: jax.lax.ppermute(a, AXIS, perm)
  return jax.shard_map(
    lambda t: jax.tree.map(move, t), mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS),
    axis_names={AXIS},
  )(tree)  # fmt: skip


def stat_name(path) -> str:
  return getattr(path[-1], "key", "")


def averaged(path) -> bool:
  """Whether a stat is a mean over micro-batches (loads are summed, MAXED maxed)."""
  return stat_name(path) not in MAXED + SUMMED


def empty(path, shape, dtype):
  """A stat's accumulator before any micro-batch: -inf for maxed stats, else 0."""
  return jnp.full(shape, -jnp.inf if stat_name(path) in MAXED else 0, dtype)


def fold(path, old, new, valid):
  """Folds one micro-batch's stat into its accumulator (bubble jobs add nothing)."""
  if stat_name(path) in MAXED:
    return jnp.where(valid, jnp.maximum(old, new), old)
  return old + jnp.where(valid, new, jnp.zeros_like(new))


def finish(path, acc, periods: int, microbatches: int):
  """[S, V, k, ...] -> [P, ...] in layer order (chunk r * S + s); the means over
  micro-batches divided out."""
  a = acc.swapaxes(0, 1).reshape(periods, *acc.shape[3:])
  return a / microbatches if averaged(path) else a


def without_stage(table: dict) -> dict:
  """The rules inside a stage: `stage` is the vmapped axis there, not the batch's."""
  return {name: tuple(a for a in axes if a != AXIS) for name, axes in table.items()}


def _stage(chunk_fn, sched: Schedule, active, w, acc, state, s, t):
  """Stage s at iteration t: its job's chunk on its carry, the stats folded into
  its round's accumulators. w, acc: this stage's [V, k, ...]; active: the mesh and
  rules the step runs under (None: no mesh)."""
  S, V, M = sched.stages, sched.virtual, sched.microbatches
  j = t - s
  valid = (j >= 0) & (j < M * V)
  r = jnp.clip(j // M, 0, V - 1)
  at_round = lambda tree: jax.tree.map(
    lambda a: jax.lax.dynamic_index_in_dim(a, r, keepdims=False), tree
  )
  inside = active and rules.activate(active[0], without_stage(active[1]))
  with inside or contextlib.nullcontext():
    x, stats = chunk_fn(at_round(w), state, r * S + s)
  folded = jax.tree_util.tree_map_with_path(
    lambda p, o, n: fold(p, o, n, valid), at_round(acc), stats
  )
  return x, jax.tree.map(lambda a, f: jax.lax.dynamic_update_index_in_dim(a, f, r, 0), acc, folded)


def accumulators(chunk_fn, chunks, inputs, sched: Schedule):
  """[S, V, k, ...] per stat of one chunk: zeros, or -inf for the maxed ones."""
  one = jax.tree.map(lambda a: a[0, 0], chunks), jax.tree.map(lambda a: a[0], inputs)
  shapes = jax.eval_shape(lambda w, c: chunk_fn(w, c, 0)[1], *one)
  full = lambda p, s: empty(p, (sched.stages, sched.virtual, *s.shape), s.dtype)
  return jax.tree_util.tree_map_with_path(full, shapes)


def to_chunks(weights, sched: Schedule):
  """[P, ...] -> [S, V, k, ...] on the stages: stage s, round r holds chunk r * S + s."""
  S, V = sched.stages, sched.virtual
  k = jax.tree.leaves(weights)[0].shape[0] // sched.chunks
  return on_stages(jax.tree.map(lambda w: w.reshape(V, S, k, *w.shape[1:]).swapaxes(0, 1), weights))


def from_chunks(chunks):
  """The inverse of `to_chunks`."""
  return jax.tree.map(lambda c: c.swapaxes(0, 1).reshape(-1, *c.shape[3:]), chunks)


def run(chunk_fn, weights, carry: dict, sched: Schedule):
  """chunk_fn(weights [k, ...], carry {name: [b, ...]}, chunk index) -> (x, stats
  [k, ...]) runs one chunk of k periods on one micro-batch; carry["x"] is what the
  chunk transforms, the other entries (positions, documents) travel with it.
  weights: [P, ...] stacked params. Returns (x [B, ...] after every chunk, stats
  [P, ...] per layer as the layer scan gives them)."""
  S, V, M = sched.stages, sched.virtual, sched.microbatches
  periods = jax.tree.leaves(weights)[0].shape[0]
  chunks = to_chunks(weights, sched)
  # [M, b, ...], every micro-batch on every stage: one gather here, not one per iteration.
  inputs = lead(jax.tree.map(lambda a: split_rows(a, M), carry), None)
  stage = functools.partial(_stage, chunk_fn, sched, rules.active())
  # Every slot starts with real data: bubble jobs then compute on finite values, so
  # their (discarded) results send no nan into the gradients.
  state = on_stages(jax.tree.map(lambda a: jnp.broadcast_to(a[0], (S, *a.shape[1:])), inputs))

  def iteration(loop, t):
    state, acc, looped = loop
    # Stage 0's input: micro-batch t's own in round 0, else its last round's output.
    # Per stage under the vmap (the others keep theirs), so nothing leaves a device.
    m, stage_ids = t % M, jnp.arange(S)
    feed = jax.tree.map(lambda a: a[m], inputs)

    def enter(held, looped, s):
      own = dict(feed, x=jnp.where(t < M, feed["x"], looped[m]))
      return jax.tree.map(lambda a, b: jnp.where(s == 0, a, b), own, held)

    state = jax.vmap(enter, spmd_axis_name=AXIS)(state, looped, stage_ids)
    x, acc = jax.vmap(stage, in_axes=(0, 0, 0, 0, None), spmd_axis_name=AXIS)(
      chunks, acc, state, stage_ids, t
    )
    state = shift(on_stages(dict(state, x=x)))
    # Stage 0 now holds the last stage's output of job t - (S - 1).
    done = t - (S - 1)
    keep = (done >= 0) & (done < M * V)
    slot = jnp.clip(done, 0, M * V - 1) % M
    store = lambda held, x: held.at[slot].set(jnp.where(keep, x, held[slot]))
    looped = jax.vmap(store, spmd_axis_name=AXIS)(looped, state["x"])
    return (state, acc, looped), None

  # What the last stage hands back, by micro-batch: each stage keeps a [M, b, ...]
  # copy so that writes and reads stay on the device (stage 0's is the one read).
  looped = on_stages(jnp.broadcast_to(inputs["x"], (S, *inputs["x"].shape)))
  loop = (state, accumulators(chunk_fn, chunks, inputs, sched), looped)
  (_, acc, looped), _ = jax.lax.scan(iteration, loop, jnp.arange(sched.iterations))
  stats = jax.tree_util.tree_map_with_path(lambda p, a: finish(p, a, periods, M), acc)
  return merge_rows(looped[0]), stats
