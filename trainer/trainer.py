"""The Trainer: validated config -> mesh, sharded init (or restore), jitted
donated train step, eval, checkpoints, metrics.

`train_step(state, batch) -> (state, metrics)` is pure; logging, eval and
checkpoints live in the loop around it.
"""

import contextlib
import dataclasses
import json
import pathlib
import re
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from flax import traverse_util
from jax.experimental import multihost_utils

from configs import base
from modeling import matformer
from modeling.losses import cross_entropy, mtp_losses
from modeling.moe import balance
from parallelism import rules
from parallelism.mesh import check_batch_fits, check_model_fits, make_mesh, mesh_sizes
from trainer import data, metrics, optim, precision, qk_clip
from trainer import state as state_lib
from trainer import checkpoint
from trainer.checkpoint import Checkpointer


def validate(config):
  """Every check that needs no compile; raises one ValueError naming the field."""
  model_cfg = precision.model_config(config)
  t = config.train
  for name in ("steps", "batch_size", "seq_len", "log_every", "eval_batches"):
    if t[name] <= 0:
      raise ValueError(f"train.{name}={t[name]} must be positive")
  optim.validate(config.optim, t.steps)
  metrics.check_logging(config.logging)
  if config.optim.qk_clip_tau > 0 and config.model.qk_norm != "none":
    raise ValueError(
      f"optim.qk_clip_tau={config.optim.qk_clip_tau} rescales query/key weights, which "
      f"model.qk_norm={config.model.qk_norm!r} undoes; QK-norm already bounds the logits, "
      "so set optim.qk_clip_tau=0"
    )
  if config.optim.qk_clip_tau > 0 and config.model.attention_gate:
    raise ValueError(
      f"optim.qk_clip_tau={config.optim.qk_clip_tau} with model.attention_gate=True is not "
      "supported: the gate shares q_proj, and QK-clip would rescale it; set one of them off"
    )
  if config.optim.qk_clip_tau > 0 and config.model.kv_shared_layers:
    raise ValueError(
      f"optim.qk_clip_tau={config.optim.qk_clip_tau} with model.kv_shared_layers="
      f"{config.model.kv_shared_layers} is not supported: K/V-reusing layers have no key "
      "projection of their own to rescale; set one of them to 0"
    )
  data.resolve_files(config.data)
  vocab = data.data_tokenizer(config.data).vocab_size
  if config.model.vocab_size < vocab:
    raise ValueError(
      f"model.vocab_size={config.model.vocab_size} is smaller than data.tokenizer="
      f"{config.data.tokenizer!r}'s {vocab} ids; raise it"
    )
  rules.with_overrides(config.mesh.rules)
  shape = mesh_sizes(config.mesh, jax.device_count())
  check_model_fits(model_cfg, shape)
  if t.matformer_dims:
    try:
      matformer.check_widths(model_cfg, t.matformer_dims)
    except ValueError as e:
      raise ValueError(f"train.matformer_dims: {e}") from None
  if config.data.shards < 0 or (config.data.shards and t.batch_size % config.data.shards):
    raise ValueError(
      f"data.shards={config.data.shards} must be 0 (one per process) or a divisor of "
      f"train.batch_size={t.batch_size}"
    )
  check_batch_fits(t.batch_size, shape)
  return model_cfg


def check_same_model(saved: dict, current: dict):
  """Resuming a workdir with a different `model` config is an error naming the fields.
  A field the checkpoint lacks (added to configs/base.py after it was written) that
  still holds its default is the same model: defaults keep the earlier behaviour."""
  before = traverse_util.flatten_dict(saved.get("model", {}), sep=".")
  now = traverse_util.flatten_dict(current["model"], sep=".")
  defaults = traverse_util.flatten_dict(base.get_config().model.to_dict(), sep=".")
  new_at_default = {k for k in set(now) - set(before) if k in defaults and now[k] == defaults[k]}
  changed = [
    f"model.{k}: {before.get(k, '(absent)')!r} in the checkpoint, {now.get(k, '(absent)')!r} now"
    for k in sorted((set(before) | set(now)) - new_at_default)
    if before.get(k) != now.get(k)
  ]
  if changed:
    raise ValueError(
      "the workdir's checkpoint was trained with a different model config ("
      + "; ".join(changed)
      + "); use a new --workdir or the checkpoint's settings"
    )


INDEXER_PARAMS = "(^|/)indexer/"
ROUTER_BIAS_PATH = "mlp/router/aux_free_bias"  # what optim.trainable must match to move it


def trainable_params(o, model_cfg) -> str:
  """optim.trainable, or during a DSA warm-up stage (dense attention) only the
  indexers: that stage trains them alone against the frozen model."""
  warmup = any(
    getattr(b.attention, "indexer", None) and b.attention.indexer.stage == "warmup"
    for b in model_cfg.blocks
  )
  return o.trainable or (INDEXER_PARAMS if warmup else "")


def mtp_weight_schedule(mtp_cfg, steps: int):
  """lambda(step): loss_weight, then late_loss_weight from late_start * steps on.

  None when the model has no MTP modules or the weight is 0 at every step: the
  step then does not run them, so it is exactly the no-MTP step.
  """
  late = int(mtp_cfg.late_start * steps)
  used = [mtp_cfg.loss_weight] * (late > 0) + [mtp_cfg.late_loss_weight] * (late < steps)
  if mtp_cfg.depth == 0 or not any(used):
    return None
  return lambda step: jnp.where(step < late, mtp_cfg.loss_weight, mtp_cfg.late_loss_weight)


def make_steps(
  graphdef, tx, lr, model_cfg, mtp_weight=None, mesh=None, table=rules.RULES, qk_clip_tau=0.0,
  sub_model=None, qk_clip_measure="forward",
):  # fmt: skip
  """Pure train and eval steps over state {step, params, model_state, opt}.

  mtp_weight: step -> MTP loss weight, or None to leave the MTP modules out.
  sub_model: (per-layer FFN widths, weight): also train that nested MatFormer sub-model,
  loss += weight * its loss (`matformer_loss` in the metrics); None = off.
  qk_clip_tau: > 0 rescales, after each update, the query/key weights of heads
  whose largest logit passed tau (MuonClip's QK-clip; trainer/qk_clip.py).
  qk_clip_measure: which largest logits decide the clip: "forward" (Kimi K2: the
  step's own forward, before the update; free) or "updated" (one more forward of
  the updated weights and router biases on the step's batch, so what the step
  returns keeps that batch's logits at tau, up to the small shift a clipped layer
  causes in the layers above it).
  mesh: traced under `rules.activate(mesh, table)`, so activations are
  constrained and MoE layers run expert parallel on it.
  """

  def loss_fn(params, model_state, batch, step, mtp=mtp_weight is not None, train=True):
    model = nnx.merge(graphdef, params, model_state)
    with rules.activate(mesh, table) if mesh is not None else contextlib.nullcontext():
      logits, aux = model(
        batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"], mtp=mtp
      )
    loss, ce = cross_entropy(logits, batch["targets"], batch["weights"], model_cfg.z_loss)
    loss = loss + aux["aux_loss"] + aux.get("indexer_loss", 0.0)
    if "mtp_logits" in aux:
      aux["mtp_loss"] = mtp_losses(
        aux.pop("mtp_logits"), batch["targets"], batch["weights"], batch["segment_ids"]
      )
      loss = loss + mtp_weight(step) * aux["mtp_loss"].mean()
    if sub_model is not None and train:
      widths, weight = sub_model
      with rules.activate(mesh, table) if mesh is not None else contextlib.nullcontext():
        sub_logits, _ = model(
          batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"],
          mtp=False, mlp_widths=widths,
        )  # fmt: skip
      sub_loss, sub_ce = cross_entropy(
        sub_logits, batch["targets"], batch["weights"], model_cfg.z_loss
      )
      loss = loss + weight * sub_loss
      aux["matformer_loss"] = sub_ce["ce"]
    return loss, (ce["ce"], aux)

  def train_step(state, batch):
    if model_cfg.per_layer_on_host:  # the step computes on the device; the jit's
      # out_shardings put the host-memory leaves (PLE table, its moments) back
      state = jax.tree.map(lambda x: jax.device_put(x, jax.memory.Space.Device), state)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (ce, aux)), grads = grad_fn(state["params"], state["model_state"], batch, state["step"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    model_state = state["model_state"]
    if model_cfg.bias_update_rate:
      model_state = update_router_biases(
        graphdef, params, model_state, aux["expert_load"], model_cfg.bias_update_rate
      )
    if qk_clip_tau > 0:
      seen = aux["max_logits"]
      if qk_clip_measure == "updated":  # a forward of what the step returns, new router
        # biases included (they route tokens elsewhere); XLA drops its unused loss
        _, (_, updated_aux) = loss_fn(params, model_state, batch, state["step"], train=False)
        seen = updated_aux["max_logits"]
      params = clip_attention(graphdef, params, model_state, seen, qk_clip_tau)
    metrics = {
      "loss": ce,
      "grad_norm": optax.tree.norm(grads),
      "lr": lr(state["step"]),
      "max_logit": jnp.max(aux["max_logits"]),  # before this step's QK-clip
    }
    metrics.update(moe_metrics(aux))
    if "mtp_loss" in aux:
      metrics["mtp_loss"] = aux["mtp_loss"]
    if "indexer_kl" in aux:
      metrics["indexer_kl"] = aux["indexer_kl"]  # [dsa_layers]
    if "matformer_loss" in aux:
      metrics["matformer_loss"] = aux["matformer_loss"]
    new_state = {"step": state["step"] + 1, "params": params, "model_state": model_state}
    return new_state | {"opt": opt}, metrics

  def eval_step(params, model_state, batch):
    _, (ce, _) = loss_fn(params, model_state, batch, 0, mtp=False, train=False)
    weight = batch["weights"].sum()
    return ce * weight, weight

  return train_step, eval_step


def clip_attention(graphdef, params, model_state, max_logits, tau: float):
  """QK-clip on the updated params; returns the params."""
  model = nnx.merge(graphdef, params, model_state)
  qk_clip.apply(model, max_logits, tau)
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def update_router_biases(graphdef, params, model_state, loads, rate: float):
  """Aux-loss-free balancing: bias += rate * sign(mean load - load), per MoE layer."""
  model = nnx.merge(graphdef, params, model_state)
  balance.update_router_biases(model, loads, rate)
  return nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))


def _merge(base: dict, update: dict) -> dict:
  """Nested dict `base` with the leaves `update` holds replaced."""
  out = dict(base)
  for key, value in update.items():
    out[key] = _merge(base[key], value) if isinstance(value, dict) else value
  return out


def local_rows(sharding, shape) -> slice:
  """The contiguous batch rows this process's devices hold under `sharding`."""
  starts, stops = set(), set()
  for index in sharding.addressable_devices_indices_map(shape).values():
    rows = index[0]
    starts.add(rows.start or 0)
    stops.add(shape[0] if rows.stop is None else rows.stop)
  lo, hi = min(starts), max(stops)
  covered = sum(b - a for a, b in zip(sorted(starts), sorted(stops), strict=True))
  if covered != hi - lo:
    raise ValueError(f"this process's batch rows are not contiguous: {sorted(starts)}")
  return slice(lo, hi)


def moe_metrics(aux: dict) -> dict:
  """Step metrics of MoE models; `expert_load` [moe_layers, E] counts are raw, summed
  over the log interval by `load_balance` on the host."""
  if "expert_load" not in aux:
    return {}
  return {
    "aux_loss": aux["aux_loss"],
    "expert_load": aux["expert_load"],
    "dropped_frac": aux["dropped_frac"],
    "router_z": aux["router_z"],
  }


def load_balance(loads) -> list[float]:
  """Per MoE layer max/mean expert load of the (token, slot) counts summed over steps.

  One step's batch is a small sample (a few hundred slots per expert in tiny
  runs), so the log interval's sum is the record: sampling noise shrinks with
  it and what remains is imbalance of the router.
  """
  total = np.sum(np.asarray(loads, np.float64), axis=0)  # [moe_layers, E]
  return (total.max(-1) / np.maximum(total.mean(-1), 1e-9)).tolist()


def progress_fields(record: dict) -> dict:
  """The progress bar's view of a metrics record (MoE and MTP fields when present)."""
  fields = {
    "loss": f"{record['loss']:.3f}",
    "tok_s": f"{record['tokens_per_s']:.0f}",
    "mfu": f"{record['mfu']:.1%}",
  }
  if "expert_load_max_over_mean" in record:
    fields["load_max"] = f"{max(record['expert_load_max_over_mean']):.2f}"
    fields["dropped"] = f"{record['dropped_frac']:.1%}"
  if "mtp_loss" in record:
    fields["mtp"] = "/".join(f"{v:.2f}" for v in record["mtp_loss"])
  if "indexer_kl" in record:
    fields["kl"] = f"{np.mean(record['indexer_kl']):.3f}"
  return fields


class Trainer:
  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, pathlib.Path(workdir)
    self.model_cfg = validate(config)
    t = config.train
    self.config_dict = json.loads(config.to_json_best_effort())
    self.checkpointer = Checkpointer(
      str(self.workdir), config.checkpoint.every, config.checkpoint.keep,
      config.checkpoint.keep_every,
    )  # fmt: skip
    if self.checkpointer.latest_step() is not None:
      check_same_model(self.checkpointer.saved_config(), self.config_dict)
    self.mesh = make_mesh(config.mesh)
    self.rules = rules.with_overrides(config.mesh.rules)
    graphdef, params, model_state = state_lib.init(self.model_cfg, self.mesh, t.seed, self.rules)
    self.graphdef = graphdef  # nnx.merge(graphdef, params, model_state) is the model.
    trainable = trainable_params(config.optim, self.model_cfg)
    tx, self.lr = optim.make(
      config.optim,
      t.steps,
      state_lib.logical_axes(self.model_cfg),
      precision.policy(config.precision).opt_state_dtype,
      trainable=trainable,
    )
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self.state = {
      "step": jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=replicated)(),
      "params": params,
      "model_state": model_state,
      "opt": state_lib.init_opt(tx, params, self.mesh),
    }
    mtp_weight = mtp_weight_schedule(config.model.mtp, t.steps)
    step_cfg = self.model_cfg
    if trainable and not re.search(trainable, ROUTER_BIAS_PATH):  # frozen routers keep their bias
      step_cfg = dataclasses.replace(step_cfg, bias_update_rate=0.0)
    sub_model = None
    if t.matformer_dims:
      sub_model = (tuple(t.matformer_dims), float(t.matformer_weight))
    train_step, eval_step = make_steps(
      graphdef, tx, self.lr, step_cfg, mtp_weight, self.mesh, self.rules,
      config.optim.qk_clip_tau, sub_model, config.optim.qk_clip_measure,
    )  # fmt: skip
    # The step returns the state in the layout it takes (left to XLA, a replicated
    # param can come back sharded, and the next step would compile again); the
    # metrics, scalars and per-layer loads, come back replicated.
    state_shardings = jax.tree.map(lambda x: x.sharding, self.state)
    self._train_step = jax.jit(
      train_step, donate_argnums=0, out_shardings=(state_shardings, replicated)
    )
    self._eval_step = jax.jit(eval_step)
    self.batch_sharding = rules.batch_sharding(self.mesh, self.rules)
    # Multi-process: the rows of each global batch this process's devices hold.
    self.rows = local_rows(self.batch_sharding, (t.batch_size, t.seq_len))
    # Each process reads only its rows' blocks of every batch (see data.make_dataset).
    self.skipped = data.Skipped()  # input this process skipped (empty, invalid, ...)
    self.dataset = data.make_dataset(
      config.data,
      split="train",
      batch_size=t.batch_size,
      seq_len=t.seq_len,
      seed=t.seed,
      shards=config.data.shards or jax.process_count(),
      rows=self.rows,
      skipped=self.skipped,
    )
    self.data_iter = iter(self.dataset)
    abstract = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )
    if self.checkpointer.latest_step() is not None:
      self.state = self.checkpointer.restore(abstract(self.state), self.data_iter)
    elif config.checkpoint.init_from:
      self._init_from(config.checkpoint.init_from, abstract)
    self._stop_requested = False

  def _init_from(self, workdir: str, abstract):
    """Starts from another run's latest weights; the optimizer state stays fresh."""
    weights = {k: self.state[k] for k in ("params", "model_state")}
    restored, missing = checkpoint.restore_weights(workdir, abstract(weights))
    for key, tree in restored.items():
      self.state[key] = _merge(self.state[key], tree)
    if missing and jax.process_index() == 0:
      print(f"init_from {workdir}: {len(missing)} arrays not in its checkpoint keep their "
            f"init: {', '.join(missing)}")  # fmt: skip

  def put(self, rows):
    """This process's rows (`self.rows`) of a batch -> global sharded arrays."""
    if jax.process_count() == 1:
      return jax.device_put(rows, self.batch_sharding)  # numpy straight to the sharded layout
    shape = (self.config.train.batch_size, self.config.train.seq_len)
    return {
      k: jax.make_array_from_process_local_data(self.batch_sharding, v, shape)
      for k, v in rows.items()
    }

  def evaluate(self, batches) -> float:
    total, weight = 0.0, 0.0
    for batch in batches:
      rows = {k: v[self.rows] for k, v in batch.items()}  # every process reads all eval data
      loss_sum, w = self._eval_step(self.state["params"], self.state["model_state"], self.put(rows))
      total, weight = total + float(loss_sum), weight + float(w)
    return total / max(weight, 1.0)

  def run(self) -> dict:
    """Trains to train.steps, or until SIGTERM (then saves the step it is on and
    returns with `preempted` True); returns the last train and eval records."""
    with self._sigterm_saves():
      return self._run()

  def _run(self) -> dict:
    cfg, t = self.config, self.config.train
    primary = jax.process_index() == 0
    if primary:  # the config this run trains with (each checkpoint also holds its own)
      (self.workdir / "config.json").write_text(self.config.to_json_best_effort(indent=2))
    writer = metrics.Writer(str(self.workdir), primary, cfg.logging, self.config_dict)
    eval_data = data.eval_batches(
      cfg.data,
      batch_size=t.batch_size,
      seq_len=t.seq_len,
      max_batches=t.eval_batches,
      skipped=self.skipped,
    )
    tokens_per_step = t.batch_size * t.seq_len
    flops = metrics.train_flops_per_token(self.model_cfg, t.seq_len) * tokens_per_step
    peak = metrics.peak_flops(t.peak_flops) * jax.device_count()
    start = int(self.state["step"])
    bar = tqdm.tqdm(
      total=t.steps,
      initial=start,
      disable=not (cfg.logging.progress_bar and primary),
      dynamic_ncols=True,
    )
    last_train, last_eval, pending, preempted, reported = {}, {}, [], False, 0
    tic = time.perf_counter()
    for step in range(start + 1, t.steps + 1):
      self.state, step_metrics = self._train_step(self.state, self.put(next(self.data_iter)))
      pending.append(step_metrics)
      bar.update(1)
      if step % t.log_every == 0 or step == t.steps:
        fetched = jax.device_get(pending)
        elapsed = time.perf_counter() - tic
        last_train = {
          "step": step,
          "loss": float(np.mean([m["loss"] for m in fetched])),
          "lr": float(fetched[-1]["lr"]),
          "grad_norm": float(fetched[-1]["grad_norm"]),
          "tokens_per_s": len(fetched) * tokens_per_step / elapsed,
          "mfu": len(fetched) * flops / elapsed / peak,
        }
        if "expert_load" in fetched[-1]:
          last_train["expert_load_max_over_mean"] = load_balance(
            [m.pop("expert_load") for m in fetched]
          )
        last_train |= {k: v for k, v in fetched[-1].items() if k not in last_train}
        self._check_finite(last_train)
        reported = self._report_skipped(last_train, reported, bar, primary)
        writer.write(last_train)
        bar.set_postfix(progress_fields(last_train))
        pending, tic = [], time.perf_counter()
      if eval_data and ((t.eval_every and step % t.eval_every == 0) or step == t.steps):
        last_eval = {"step": step, "eval_loss": self.evaluate(eval_data)}
        writer.write(last_eval)
        if primary:
          bar.write(f"step {step}: eval_loss {last_eval['eval_loss']:.4f}")
        tic = time.perf_counter()
      preempted = self._preempted(step)
      if self.checkpointer.due(step) or step == t.steps or preempted:
        self.checkpointer.save(step, self.state, self.data_iter, self.config_dict)
      if preempted:
        if primary:
          bar.write(f"SIGTERM: saved step {step}; run the same command to resume")
        break
    bar.close()
    writer.close()
    self.checkpointer.close()
    return {"train": last_train, "eval": last_eval, "preempted": preempted}

  @contextlib.contextmanager
  def _sigterm_saves(self):
    """While training, SIGTERM (preemption) asks for a save at the end of the step."""
    if threading.current_thread() is not threading.main_thread():
      yield
      return

    def request(signum, frame):
      del signum, frame
      self._stop_requested = True

    previous = signal.signal(signal.SIGTERM, request)
    try:
      yield
    finally:
      signal.signal(signal.SIGTERM, previous)

  def _report_skipped(self, record: dict, reported: int, bar, primary: bool) -> int:
    """Adds this process's skipped-input counts to the record (when any) and prints
    them whenever they grew; returns the total reported."""
    total = self.skipped.total()
    if total:
      record |= {f"skipped_{r}": n for r, n in self.skipped.counts.items() if n}
    if total > reported and primary:
      bar.write(f"data: skipped {self.skipped.summary()}")
    return total

  def _preempted(self, step: int) -> bool:
    """Whether to save and stop after `step`. With several processes, all agree
    at log steps (one all-gather of a flag) so they save the same step."""
    if jax.process_count() == 1:
      return self._stop_requested
    if step % self.config.train.log_every:
      return False
    flags = multihost_utils.process_allgather(np.array(self._stop_requested))
    return bool(np.any(flags))

  def _check_finite(self, record):
    if not np.isfinite(record["loss"]):
      last = self.checkpointer.latest_step()
      raise FloatingPointError(
        f"loss is {record['loss']} at step {record['step']}; last good "
        f"checkpoint: {'none' if last is None else f'step {last}'}"
      )
