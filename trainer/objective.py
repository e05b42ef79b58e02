"""What the loss rewards (`config.objective`): next-token cross-entropy plus the
optional terms, each with its weight and schedule.

loss = CE + z_loss * log(Z)^2
     + MoE balance terms (sequence-wise, Switch, router z; summed over MoE layers)
     + indexer_kl * the DSA indexers' KL (summed over layers)
     + w_mtp(step) * mean of the MTP depths' CE
     + matformer_weight * the nested sub-model's loss.

The model reports raw per-layer stats (modeling/decoder.py); the weights live
here, so changing one never changes the model config.
"""

import dataclasses
import functools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp

from modeling import decoder, losses, matformer
from modeling.attention.sparse import STAGES as INDEXER_STAGES
from modeling.decoder import DecoderConfig, by_layer
from modeling.moe.config import MoeConfig

ROUTER_BIAS_PATH = "mlp/router/aux_free_bias"  # what optim.trainable must match to move it
INDEXER_PARAMS = "(^|/)indexer/"


@dataclasses.dataclass(frozen=True)
class Objective:
  z_loss: float = 0.0
  seq_aux: float = 0.0  # MoE balance-loss weights
  switch_aux: float = 0.0
  router_z: float = 0.0
  indexer_kl: float = 0.0
  bias_update_rate: float = 0.0  # the aux-free bias step after each update (0 = none)
  mtp: Callable | None = None  # step -> MTP weight; None: the MTP modules do not run
  matformer: tuple | None = None  # (per-layer widths, weight) of the jointly trained sub-model
  loss_chunks: int = 1  # sequence chunks the output head and its CE run in (compute.loss_chunks)


@dataclasses.dataclass(frozen=True)
class Shares:
  """How one micro-batch's loss adds up to its step's (`train.microbatches`): the
  weighted means (CE, z-loss, each MTP depth) divide by the whole batch's weights,
  so the micro-batches' values sum to the batch's; the per-token and per-sequence
  means (MoE balance terms, router z, dropped fraction, indexer KL) count `mean`
  = 1 / micro-batches of their own."""

  ce: jax.Array  # the batch's CE denominator
  mtp: jax.Array | None  # [depth] the batch's MTP denominators
  mean: float


def batch_shares(batch, mtp_depth: int, microbatches: int) -> Shares:
  """The shares of one of `microbatches` equal parts of `batch` (the whole batch)."""
  w, seg = batch["weights"], batch["segment_ids"]
  depths = [losses.mtp_weights(k, w, seg) for k in range(1, mtp_depth + 1)]
  return Shares(
    ce=losses.weight_denominator(w),
    mtp=jnp.stack([losses.weight_denominator(d) for d in depths]) if depths else None,
    mean=1.0 / microbatches,
  )


def mtp_weight_schedule(o, depth: int, steps: int):
  """lambda(step): mtp_weight, then mtp_late_weight from mtp_late_start * steps on.

  None when the model has no MTP modules or the weight is 0 at every step: the
  step then does not run them, so it is exactly the no-MTP step.
  """
  late = int(o.mtp_late_start * steps)
  used = [o.mtp_weight] * (late > 0) + [o.mtp_late_weight] * (late < steps)
  if depth == 0 or not any(used):
    return None
  return lambda step: jnp.where(step < late, o.mtp_weight, o.mtp_late_weight)


def has_indexers(cfg: DecoderConfig) -> bool:
  return any(getattr(b.attention, "indexer", None) for b in cfg.blocks)


def trainable_params(config, cfg: DecoderConfig) -> str:
  """optim.trainable, or during a DSA warm-up stage (dense attention) only the
  indexers: that stage trains them alone against the frozen model."""
  warmup = config.objective.indexer_stage == "warmup" and has_indexers(cfg)
  return config.optim.trainable or (INDEXER_PARAMS if warmup else "")


def validate(config, cfg: DecoderConfig):
  """The objective's fields, one error naming the field."""
  o = config.objective
  for name in ("z_loss", "moe_seq_aux_weight", "moe_switch_aux_weight", "moe_router_z_weight",
               "moe_bias_update_rate", "mtp_weight", "mtp_late_weight", "indexer_kl_weight"):  # fmt: skip
    if not o[name] >= 0:
      raise ValueError(f"objective.{name}={o[name]} must be >= 0")
  if not 0 <= o.mtp_late_start <= 1:
    raise ValueError(f"objective.mtp_late_start={o.mtp_late_start} must be in [0, 1]")
  if o.indexer_stage not in INDEXER_STAGES:
    raise ValueError(
      f"objective.indexer_stage={o.indexer_stage!r} is not valid; use one of "
      f"{', '.join(INDEXER_STAGES)}"
    )
  if o.matformer_dims:
    try:
      matformer.check_widths(cfg, o.matformer_dims)
    except ValueError as e:
      raise ValueError(f"objective.matformer_dims: {e}") from None


def from_config(config, cfg: DecoderConfig) -> Objective:
  """The run's objective; a frozen router (optim.trainable) keeps its bias."""
  o, trainable = config.objective, trainable_params(config, cfg)
  aux_free = any(isinstance(b.mlp, MoeConfig) and b.mlp.aux_free_bias for b in cfg.blocks)
  rate = o.moe_bias_update_rate if aux_free else 0.0
  if trainable and not re.search(trainable, ROUTER_BIAS_PATH):
    rate = 0.0
  widths = tuple(o.matformer_dims)
  return Objective(
    z_loss=o.z_loss,
    seq_aux=o.moe_seq_aux_weight,
    switch_aux=o.moe_switch_aux_weight,
    router_z=o.moe_router_z_weight,
    indexer_kl=o.indexer_kl_weight if has_indexers(cfg) else 0.0,
    bias_update_rate=rate,
    mtp=mtp_weight_schedule(o, cfg.mtp_depth, config.train.steps),
    matformer=(widths, float(o.matformer_weight)) if widths else None,
    loss_chunks=config.compute.loss_chunks,
  )


def _sum(aux: dict, name: str):
  """`name` summed over every layer (and scanned period) that reports it."""
  values = [st[name].sum() for st in aux["layers"].values() if name in st]
  return sum(values) if values else jnp.zeros((), jnp.float32)


def _count(aux: dict, name: str) -> int:
  return sum(st[name].size for st in aux["layers"].values() if name in st)


def stat_weights(obj: Objective) -> dict:
  """Each per-layer stat's weight in the loss (`layer_terms` is linear in them)."""
  return {"seq_aux": obj.seq_aux, "switch_aux": obj.switch_aux, "router_z": obj.router_z,
          "indexer_kl": obj.indexer_kl}  # fmt: skip


def moe_terms(obj: Objective, cfg: DecoderConfig, aux: dict, share: float = 1.0) -> dict:
  """The weighted MoE balance loss and the MoE metrics (empty without MoE layers):
  `expert_load` [moe_layers, E] raw counts in layer order, means over layers of
  `dropped_frac` and `router_z`; all but the counts times `share` (Shares.mean)."""
  layers = _count(aux, "seq_aux")
  if not layers:
    return {}
  weights = stat_weights(obj)
  aux_loss = sum(weights[name] * _sum(aux, name) for name in ("seq_aux", "switch_aux", "router_z"))
  return {
    "aux_loss": aux_loss * share,
    "expert_load": by_layer(cfg, aux, "mlp", "load"),
    "dropped_frac": _sum(aux, "dropped_frac") / layers * share,
    "router_z": _sum(aux, "router_z") / layers * share,
  }


def layer_terms(obj: Objective, cfg: DecoderConfig, aux: dict, share: float = 1.0):
  """(the loss of the layers' stats, their reported terms): the MoE balance terms
  (`moe_terms`) and the DSA indexers' KL ([dsa_layers] `indexer_kl`), times share."""
  terms = moe_terms(obj, cfg, aux, share)
  total = terms.get("aux_loss", jnp.zeros((), jnp.float32))
  kl = by_layer(cfg, aux, "attn", "indexer_kl")
  if kl is not None:
    terms["indexer_kl"] = kl * share  # [dsa_layers]
    total = total + stat_weights(obj)["indexer_kl"] * terms["indexer_kl"].sum()
  return total, terms


def loss(obj: Objective, cfg: DecoderConfig, run_model, batch, step, *, mtp: bool, train: bool,
         shares: Shares | None = None):  # fmt: skip
  """(total loss, (CE, aux, terms)): run_model(mlp_widths, mtp) -> (normed hidden,
  aux, the output head's weights); the head and its CE (the MTP depths' too, in
  the same pass) run in `obj.loss_chunks` sequence chunks. terms: the reported
  parts (MoE metrics, indexer KLs, MTP and MatFormer losses). shares: this batch's
  part of a step over micro-batches (None: the whole step)."""
  ce_denom, mtp_denoms, share = (None, None, 1.0) if shares is None else (
    shares.ce, shares.mtp, shares.mean)  # fmt: skip
  targets, weights, chunks = batch["targets"], batch["weights"], obj.loss_chunks
  project = functools.partial(decoder.project, cfg)
  hidden, aux, head = run_model(None, mtp)
  total, ce, mtp_loss = losses.head_losses(
    project, head, hidden, targets, weights, mtp_hidden=aux.pop("mtp_hidden", ()),
    segment_ids=batch["segment_ids"], z_loss=obj.z_loss, denom=ce_denom, mtp_denoms=mtp_denoms,
    chunks=chunks,
  )  # fmt: skip
  stats_loss, terms = layer_terms(obj, cfg, aux, share)
  total = total + stats_loss
  if mtp_loss is not None:
    terms["mtp_loss"] = mtp_loss
    total = total + obj.mtp(step) * mtp_loss.mean()
  if obj.matformer is not None and train:
    widths, weight = obj.matformer
    sub_hidden, _, _ = run_model(widths, False)
    sub_loss, sub_ce, _ = losses.head_losses(
      project, head, sub_hidden, targets, weights, z_loss=obj.z_loss, denom=ce_denom, chunks=chunks
    )
    total = total + weight * sub_loss
    terms["matformer_loss"] = sub_ce["ce"]
  return total, (ce["ce"], aux, terms)
