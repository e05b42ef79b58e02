"""Gradient accumulation (`train.microbatches`): one step's global batch as n
equal micro-batches run one after another inside the jitted step (`lax.scan`),
their gradients summed in float32, then one optimizer update.

Each micro-batch's loss is its share of the whole batch's (`objective.Shares`):
weighted means divide by the whole batch's weights, per-token means count 1/n.
So the summed loss, gradients, MoE expert loads (the aux-free bias update) and
MTP losses equal the single big batch's to float32 rounding. Two things are per
micro-batch by nature, as in Megatron and MaxText: the Switch balance loss (a
product of two batch means) and `capacity` dispatch (each expert's capacity is
counted on the micro-batch's tokens).

Micro-batch i holds rows i, i + n, i + 2n, ...: the batch axis is split over
the devices in contiguous blocks, so every device keeps its own rows and the
split moves no data.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from parallelism import pipeline

# Per-layer stats the post-update hooks read, and how micro-batches combine them.
HOOK_STATS = {"load": jnp.sum, "max_logits": jnp.max}


@dataclasses.dataclass(frozen=True)
class Plan:
  n: int  # micro-batches per step (> 1)
  batch_sharding: NamedSharding  # of the whole batch's [batch, seq] arrays
  grad_shardings: Any  # the params' shardings: the summed gradients keep them


def split(batch: dict, plan: Plan) -> dict:
  """[B, ...] arrays -> [n, B / n, ...]; micro-batch i holds rows i, i + n, ..."""
  sharding = plan.batch_sharding
  stacked = NamedSharding(sharding.mesh, P(None, *sharding.spec))

  def one(a):
    return jax.lax.with_sharding_constraint(pipeline.split_rows(a, plan.n), stacked)

  return jax.tree.map(one, batch)


def hook_stats(layers: dict) -> dict:
  """The per-layer stats the hooks need, of one micro-batch's aux["layers"]."""
  return {path: {k: st[k] for k in HOOK_STATS if k in st} for path, st in layers.items()}


def combine_stats(stacked: dict) -> dict:
  """[n, ...] hook stats -> the whole batch's (loads summed, max logits maxed)."""
  return {
    path: {k: HOOK_STATS[k](v, axis=0) for k, v in st.items()} for path, st in stacked.items()
  }


def accumulate(grad_fn, params, batch: dict, plan: Plan):
  """grad_fn(params, micro_batch) -> ((total, (ce, aux, terms)), grads), the
  micro-batch's shares. Returns the same for the whole batch: totals, CE and
  terms summed, the hook stats combined, gradients summed in float32 and cast
  to the params' dtypes."""
  constrain = lambda tree: jax.lax.with_sharding_constraint(tree, plan.grad_shardings)

  def body(acc, micro):
    (total, (ce, aux, terms)), grads = grad_fn(params, micro)
    acc = constrain(jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads))
    return acc, (total, ce, hook_stats(aux["layers"]), terms)

  zeros = constrain(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
  acc, (total, ce, layers, terms) = jax.lax.scan(body, zeros, split(batch, plan))
  grads = jax.tree.map(lambda a, p: a.astype(p.dtype), acc, params)
  summed = jax.tree.map(lambda v: v.sum(axis=0), terms)
  return (total.sum(), (ce.sum(), {"layers": combine_stats(layers)}, summed)), grads


def forward_stats(stats_fn, batch: dict, plan: Plan) -> dict:
  """The whole batch's hook stats from stats_fn(micro_batch) -> aux["layers"],
  one micro-batch at a time."""
  return combine_stats(jax.lax.map(lambda m: hook_stats(stats_fn(m)), split(batch, plan)))


def summed(fn, batch: dict, plan: Plan):
  """fn(micro_batch) -> a tree of sums, summed over the micro-batches."""
  return jax.tree.map(lambda v: v.sum(axis=0), jax.lax.map(fn, split(batch, plan)))
