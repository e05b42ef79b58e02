"""The one builder of a run's train state and step.

`build(config, mesh)` makes the model config, optimizer, objective, the state's
shardings and the jitted train and eval steps with their post-update hooks
(aux-loss-free router bias, QK-clip). `Trainer`, `scripts/bench.py` and
`trainer/plan.py` all call it, so the program planned, benchmarked and trained
is the same program.

`train_step(state, batch) -> (state, metrics)` is pure: state is
{step, params, model_state, opt}; metrics are replicated device values.
"""

import contextlib
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from modeling import matformer
from modeling.decoder import DecoderConfig
from parallelism import pipeline, rules
from trainer import hooks, microbatch, objective, optim, pipelined, precision
from trainer import state as state_lib

# The step's metrics besides loss, grad_norm, lr (and max_logit), when the objective has them.
TERMS = ("aux_loss", "expert_load", "dropped_frac", "router_z", "mtp_loss", "indexer_kl",
         "matformer_loss")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Program:
  """Everything one run's step is made of."""

  config: Any
  model_cfg: DecoderConfig
  mesh: jax.sharding.Mesh
  rules: dict
  graphdef: Any  # nnx.merge(graphdef, params, model_state) is the model
  tx: optax.GradientTransformation
  lr: optax.Schedule
  objective: objective.Objective
  abstract_state: dict  # ShapeDtypeStructs carrying the state's NamedShardings
  batch_sharding: NamedSharding
  train_step: Any  # jitted (state, batch) -> (state, metrics); donates the state
  eval_step: Any  # jitted (params, model_state, batch) -> (CE sum, weight)

  def init_state(self, seed: int) -> dict:
    """The train state at step 0, created directly in its shardings."""
    _, params, model_state = state_lib.init(self.model_cfg, self.mesh, seed, self.rules)
    replicated = NamedSharding(self.mesh, P())
    return {
      "step": jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=replicated)(),
      "params": params,
      "model_state": model_state,
      "opt": state_lib.init_opt(self.tx, params, self.mesh),
    }

  def abstract_batch(self) -> dict:
    t = self.config.train
    token = lambda dtype: jax.ShapeDtypeStruct(
      (t.batch_size, t.seq_len), dtype, sharding=self.batch_sharding
    )
    return {
      "inputs": token(jnp.int32),
      "targets": token(jnp.int32),
      "segment_ids": token(jnp.int32),
      "positions": token(jnp.int32),
      "weights": token(jnp.float32),
    }

  def lower(self, state=None, batch=None):
    """The train step lowered for `state` and `batch` (default: the abstract ones)."""
    return self.train_step.lower(state or self.abstract_state, batch or self.abstract_batch())


def build(config, mesh, model_cfg: DecoderConfig | None = None) -> Program:
  """The run's program on `mesh` (model_cfg: the validated model, when the caller
  has it already)."""
  cfg = model_cfg or precision.model_config(config)
  # Pipeline stages run the train.microbatches together, not one after another.
  sched = pipeline.schedule(config, cfg, mesh.shape.get(pipeline.AXIS, 1))
  cfg = dataclasses.replace(cfg, pipeline=sched)
  table = rules.with_overrides(config.mesh.rules)
  graphdef, _, _ = state_lib.abstract(cfg)
  state_dtype = precision.policy(config.precision).opt_state_dtype
  trainable = objective.trainable_params(config, cfg)
  tx, lr = optim.make(
    config.optim, config.train.steps, state_lib.logical_axes(cfg), state_dtype, trainable
  )
  obj = objective.from_config(config, cfg)
  loss_fn = make_loss_fn(graphdef, cfg, obj, mesh, table)
  abstract = abstract_state(cfg, mesh, tx, table)
  # The step returns the state in the layout it takes (left to XLA, a replicated
  # param can come back sharded, and the next step would compile again).
  shardings = jax.tree.map(lambda s: s.sharding, abstract)
  batch_sharding = rules.batch_sharding(mesh, table)
  n = config.train.microbatches
  accumulate = n > 1 and sched is None
  micro = microbatch.Plan(n, batch_sharding, shardings["params"]) if accumulate else None
  train_step = make_train_step(
    graphdef, cfg, tx, lr, obj, loss_fn, config.optim, precision.wants_max_logit(config), micro
  )
  replicated = NamedSharding(mesh, P())
  # An AbstractMesh (trainer/plan.py) has no devices: the default backend decides.
  platform = mesh.devices.flat[0].platform if isinstance(mesh, jax.sharding.Mesh) else ""
  options = precision.compiler_options(config, platform)
  return Program(
    config=config,
    model_cfg=cfg,
    mesh=mesh,
    rules=table,
    graphdef=graphdef,
    tx=tx,
    lr=lr,
    objective=obj,
    abstract_state=abstract,
    batch_sharding=batch_sharding,
    train_step=jax.jit(
      train_step,
      donate_argnums=0,
      out_shardings=(shardings, replicated),
      compiler_options=options,
    ),
    eval_step=jax.jit(functools.partial(eval_step, loss_fn, micro), compiler_options=options),
  )


def abstract_state(cfg: DecoderConfig, mesh, tx, table) -> dict:
  """The train state as ShapeDtypeStructs carrying their NamedShardings: optimizer
  moments laid out like their params, step and counts replicated."""
  weights = state_lib.abstract_weights(cfg, mesh, table)
  params, rest = weights["params"], weights["model_state"]
  param_shardings = jax.tree.map(lambda s: s.sharding, params)
  opt = jax.eval_shape(tx.init, params)
  opt = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    opt,
    state_lib.opt_shardings(tx, opt, param_shardings, mesh),
  )
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
  return {"step": step, "params": params, "model_state": rest, "opt": opt}


def make_loss_fn(graphdef, cfg: DecoderConfig, obj, mesh, table):
  """loss_fn(params, model_state, batch, step, *, mtp, train, shares) -> (loss, (CE,
  aux, terms)); model and loss run under `rules.activate(mesh, table)`, so
  activations are constrained, MoE layers run expert parallel on the mesh and the
  loss over chunks on each device's own tokens. shares: a
  micro-batch's part of its step (`objective.Shares`)."""

  one_f_one_b = cfg.pipeline is not None and cfg.pipeline.kind == "1f1b"

  def loss_fn(params, model_state, batch, step, *, mtp: bool, train: bool = True, shares=None):
    model = nnx.merge(graphdef, params, model_state)

    def run_model(mlp_widths, with_mtp):
      hidden, aux = model(
        batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"],
        mtp=with_mtp, layer_inputs=None if mlp_widths is None else matformer.layer_inputs(mlp_widths),
        logits=False,
      )  # fmt: skip
      return hidden, aux, model.head()

    with rules.activate(mesh, table) if mesh is not None else contextlib.nullcontext():
      if train and one_f_one_b:  # the backward runs inside the schedule
        return pipelined.loss(model, obj, batch, step, mtp=mtp)
      return objective.loss(obj, cfg, run_model, batch, step, mtp=mtp, train=train, shares=shares)

  return loss_fn


def make_train_step(graphdef, cfg: DecoderConfig, tx, lr, obj, loss_fn, o, log_max_logit=False,
                    micro: microbatch.Plan | None = None):  # fmt: skip
  """The pure train step; `o` is config.optim (QK-clip's tau and measure);
  `log_max_logit`: report the forward's largest attention logit as `max_logit`;
  `micro`: accumulate the gradients of micro-batches (None: one batch)."""
  mtp = obj.mtp is not None
  on_host = cfg.stream is not None and cfg.stream.on_host

  gradients = make_gradients(loss_fn, cfg, mtp, micro)

  def train_step(state, batch):
    if on_host:  # the step computes on the device; out_shardings put host leaves back
      state = jax.tree.map(lambda x: jax.device_put(x, jax.memory.Space.Device), state)
    (total, (ce, aux, terms)), grads = gradients(state, batch)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    model_state = state["model_state"]
    if obj.bias_update_rate:
      model_state = hooks.update_router_biases(
        graphdef, params, model_state, aux["layers"], obj.bias_update_rate
      )
    if o.qk_clip_tau > 0:
      seen = aux["layers"]
      if o.qk_clip_measure == "updated":  # a forward of what the step returns, new router
        # biases included (they route tokens elsewhere); XLA drops its unused loss
        def stats(mb):
          _, (_, updated, _) = loss_fn(params, model_state, mb, state["step"], mtp=mtp, train=False)
          return updated["layers"]

        seen = stats(batch) if micro is None else microbatch.forward_stats(stats, batch, micro)
      params = hooks.clip_attention(graphdef, params, model_state, seen, o.qk_clip_tau)
    grad_norm = optax.tree.norm(grads)
    # The loop never saves a state after a step whose flag is False (nan/inf in the
    # loss, the gradients or the params it returns: an inf/nan update lands there).
    # Reading the new params, not the updates, lets XLA write each update straight
    # into its param instead of keeping a params-sized updates tree for a norm.
    finite = jnp.isfinite(total) & jnp.isfinite(ce) & jnp.isfinite(grad_norm)
    finite &= jnp.isfinite(optax.tree.norm(params))
    metrics = {"loss": ce, "grad_norm": grad_norm, "lr": lr(state["step"]), "finite": finite}
    reported = any("max_logits" in st for st in aux["layers"].values())  # cuDNN: none
    if log_max_logit and reported:
      metrics["max_logit"] = max_logit(aux)  # before this step's QK-clip
    metrics.update({k: terms[k] for k in TERMS if k in terms})
    new_state = {"step": state["step"] + 1, "params": params, "model_state": model_state}
    return new_state | {"opt": opt}, metrics

  return train_step


def make_gradients(loss_fn, cfg: DecoderConfig, mtp: bool, micro: microbatch.Plan | None):
  """gradients(state, batch) -> ((total, (CE, aux, terms)), grads) of the step's
  batch: one pass, or under `micro` the sum over its micro-batches."""

  def gradients(state, batch):
    model_state, step = state["model_state"], state["step"]
    if micro is None:
      grad_fn = jax.value_and_grad(functools.partial(loss_fn, mtp=mtp), has_aux=True)
      return grad_fn(state["params"], model_state, batch, step)
    shares = objective.batch_shares(batch, cfg.mtp_depth if mtp else 0, micro.n)
    part = lambda p, mb: loss_fn(p, model_state, mb, step, mtp=mtp, shares=shares)
    grad_fn = jax.value_and_grad(part, has_aux=True)
    return microbatch.accumulate(grad_fn, state["params"], batch, micro)

  return gradients


def max_logit(aux: dict):
  """The largest pre-softmax attention logit of the forward (0 if none reported)."""
  values = [jnp.max(st["max_logits"]) for st in aux["layers"].values() if "max_logits" in st]
  return jnp.max(jnp.stack(values)) if values else jnp.zeros((), jnp.float32)


def eval_step(loss_fn, micro, params, model_state, batch):
  """(sum of the CE over weighted positions, their weight) of one held-out batch,
  a micro-batch at a time under `micro`."""

  def sums(batch):
    _, (ce, _, _) = loss_fn(params, model_state, batch, 0, mtp=False, train=False)
    weight = batch["weights"].sum()
    return ce * weight, weight

  return sums(batch) if micro is None else microbatch.summed(sums, batch, micro)
