"""The step's loss under the 1F1B pipeline schedule (parallelism/pipeline_1f1b.py).

The model runs in three parts: before the stacked periods (embedding, prefix
layers) on the whole batch, as without stages; the stacked periods over the
stages; and after them (tail layers, final norm, MTP, head and CE) one
micro-batch at a time inside the schedule, each with the whole batch's
denominators (`objective.Shares`), as gradient accumulation computes it. The
result has `objective.loss`'s form, so the train step and its hooks do not
depend on the schedule.
"""

import jax
from flax import nnx

from modeling.context import Context
from modeling.decoder import Decoder, DecoderConfig, stack_stats
from parallelism import pipeline, pipeline_1f1b
from trainer import objective


def _post_fn(graphdef, cfg: DecoderConfig, obj, batch, step, mtp: bool, shares):
  """post_fn(weights, rest, carry, m) -> (loss, out) of micro-batch m from its
  pipelined output carry["x"] on (see pipeline_1f1b.run)."""
  parts = jax.tree.map(lambda a: pipeline.split_rows(a, cfg.pipeline.microbatches), batch)

  def post_fn(weights, rest, carry, m):
    mb = jax.tree.map(lambda a: a[m], parts)
    model = nnx.merge(graphdef, nnx.State({"stack": weights}), rest)
    ctx = Context(carry["positions"], carry["segment_ids"])

    def run_model(mlp_widths, with_mtp):
      hidden, aux = model.back(carry["x"], mb["inputs"], ctx, {}, {}, mtp=with_mtp, logits=False)
      return hidden, aux, model.head()

    total, (ce, aux, terms) = objective.loss(
      obj, cfg, run_model, mb, step, mtp=mtp, train=True, shares=shares
    )
    out = {"ce": ce, "layers": aux["layers"]}
    if "mtp_loss" in terms:
      out["mtp_loss"] = terms["mtp_loss"]
    return total, out

  return post_fn


def loss(model: Decoder, obj, batch, step, *, mtp: bool):
  """(total loss, (CE, aux, terms)) of the batch, as `objective.loss` gives them."""
  cfg = model.cfg
  M = cfg.pipeline.microbatches
  x, ctx, _, stats = model.front(
    batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"]
  )
  front_loss, _ = objective.layer_terms(obj, cfg, {"layers": stats})
  graphdef, stacked, rest = nnx.split(model, nnx.PathContains("stack"), ...)
  shares = objective.batch_shares(batch, cfg.mtp_depth if mtp else 0, M)
  post_fn = _post_fn(graphdef, cfg, obj, batch, step, mtp, shares)
  carry = {"x": x, "positions": ctx.positions, "segment_ids": ctx.segment_ids}
  weights = {name: w / M for name, w in objective.stat_weights(obj).items() if w}
  total, (out, pipelined) = pipeline_1f1b.run(
    model.chunk_fn(ctx), post_fn, stacked["stack"], rest, carry, cfg.pipeline, weights
  )
  stack_stats(pipelined, stats)
  for path, layer in out["layers"].items():  # the means over micro-batches
    stats[path] = jax.tree_util.tree_map_with_path(
      lambda p, a: a / M if pipeline.averaged(p) else a, layer
    )
  aux = {"layers": stats}
  _, terms = objective.layer_terms(obj, cfg, aux)
  if "mtp_loss" in out:
    terms["mtp_loss"] = out["mtp_loss"]
  return front_loss + total, (out["ce"], aux, terms)
