"""The Trainer: validated config -> mesh, sharded init (or restore), jitted
donated train step, eval, checkpoints, metrics.

`train_step(state, batch) -> (state, metrics)` is pure; logging, eval and
checkpoints live in the loop around it.
"""

import contextlib
import json
import pathlib
import signal
import threading
import time

import jax
import numpy as np
import tqdm
from flax import traverse_util
from jax.experimental import multihost_utils

from configs import base, moved
from modeling.attention import kernels
from parallelism import rules
from parallelism.mesh import check_batch_fits, check_model_fits, make_mesh, mesh_sizes
from trainer import checkpoint, data, documents, metrics, objective, optim, precision
from trainer import step as step_lib
from trainer.checkpoint import Checkpointer


def validate(config):
  """Every check that needs no compile; raises one ValueError naming the field."""
  model_cfg = precision.model_config(config)
  t = config.train
  for name in ("steps", "batch_size", "seq_len", "log_every", "eval_batches"):
    if t[name] <= 0:
      raise ValueError(f"train.{name}={t[name]} must be positive")
  optim.validate(config.optim, t.steps)
  objective.validate(config, model_cfg)
  metrics.check_logging(config.logging)
  _check_qk_clip(config)
  data.resolve_files(config.data)
  vocab = documents.data_tokenizer(config.data).vocab_size
  if config.model.vocab_size < vocab:
    raise ValueError(
      f"model.vocab_size={config.model.vocab_size} is smaller than data.tokenizer="
      f"{config.data.tokenizer!r}'s {vocab} ids; raise it"
    )
  rules.with_overrides(config.mesh.rules)
  shape = mesh_sizes(config.mesh, jax.device_count())
  check_model_fits(model_cfg, shape)
  if config.data.shards < 0 or (config.data.shards and t.batch_size % config.data.shards):
    raise ValueError(
      f"data.shards={config.data.shards} must be 0 (one per process) or a divisor of "
      f"train.batch_size={t.batch_size}"
    )
  check_batch_fits(t.batch_size, shape)
  return model_cfg


def _check_qk_clip(config):
  tau, m = config.optim.qk_clip_tau, config.model
  if tau > 0 and m.qk_norm != "none":
    raise ValueError(
      f"optim.qk_clip_tau={tau} rescales query/key weights, which model.qk_norm="
      f"{m.qk_norm!r} undoes; QK-norm already bounds the logits, so set optim.qk_clip_tau=0"
    )
  if tau > 0 and m.attention_gate:
    raise ValueError(
      f"optim.qk_clip_tau={tau} with model.attention_gate=True is not supported: the gate "
      "shares q_proj, and QK-clip would rescale it; set one of them off"
    )
  if tau > 0 and m.kv_shared_layers:
    raise ValueError(
      f"optim.qk_clip_tau={tau} with model.kv_shared_layers={m.kv_shared_layers} is not "
      "supported: K/V-reusing layers have no key projection of their own to rescale; set "
      "one of them to 0"
    )


def check_same_model(saved: dict, current: dict):
  """Resuming a workdir with a different `model` config is an error naming the fields.
  The saved config is read in this version's layout first (`base.migrate`: settings
  that left `model` are not compared). A field the checkpoint lacks (added to
  configs/base.py after it was written) that still holds its default is the same
  model: defaults keep the earlier behaviour."""
  before = traverse_util.flatten_dict(moved.migrate(saved).get("model", {}), sep=".")
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
    if jax.process_index() == 0:
      print(f"attention kernels: {kernels.describe(self.model_cfg.blocks)}", flush=True)
    self.program = step_lib.build(config, self.mesh, self.model_cfg)
    self.graphdef = self.program.graphdef  # nnx.merge(graphdef, params, model_state): the model
    self._train_step, self._eval_step = self.program.train_step, self.program.eval_step
    self.state = self.program.init_state(t.seed)
    self.batch_sharding = self.program.batch_sharding
    # Multi-process: the rows of each global batch this process's devices hold.
    self.rows = local_rows(self.batch_sharding, (t.batch_size, t.seq_len))
    self.skipped = documents.Skipped()  # input this process skipped (empty, invalid, ...)
    # Each process reads only its rows' blocks of every batch (see data.make_dataset).
    self.dataset = data.make_dataset(
      config.data, split="train", batch_size=t.batch_size, seq_len=t.seq_len, seed=t.seed,
      shards=config.data.shards or jax.process_count(), rows=self.rows, skipped=self.skipped,
    )  # fmt: skip
    self.data_iter = iter(self.dataset)
    if self.checkpointer.latest_step() is not None:
      self.state = self.checkpointer.restore(self.program.abstract_state, self.data_iter)
    elif config.checkpoint.init_from:
      self._init_from(config.checkpoint.init_from)
    self._stop_requested = False

  def _init_from(self, workdir: str):
    """Starts from another run's latest weights; the optimizer state stays fresh."""
    weights = {k: self.program.abstract_state[k] for k in ("params", "model_state")}
    restored, missing = checkpoint.restore_weights(workdir, weights)
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
      cfg.data, batch_size=t.batch_size, seq_len=t.seq_len, max_batches=t.eval_batches,
      skipped=self.skipped,
    )  # fmt: skip
    start = int(self.state["step"])
    bar = tqdm.tqdm(
      total=t.steps, initial=start, disable=not (cfg.logging.progress_bar and primary),
      dynamic_ncols=True,
    )  # fmt: skip
    last_train, last_eval, pending, preempted, reported = {}, {}, [], False, 0
    tic = time.perf_counter()
    for step in range(start + 1, t.steps + 1):
      self.state, step_metrics = self._train_step(self.state, self.put(next(self.data_iter)))
      pending.append(step_metrics)
      bar.update(1)
      if step % t.log_every == 0 or step == t.steps:
        last_train = self._train_record(step, jax.device_get(pending), time.perf_counter() - tic)
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

  def _train_record(self, step: int, fetched: list, elapsed: float) -> dict:
    """The metrics record of the steps since the last one (checked finite)."""
    t = self.config.train
    tokens = len(fetched) * t.batch_size * t.seq_len
    flops = metrics.train_flops_per_token(self.model_cfg, t.seq_len) * tokens
    record = {
      "step": step,
      "loss": float(np.mean([m["loss"] for m in fetched])),
      "lr": float(fetched[-1]["lr"]),
      "grad_norm": float(fetched[-1]["grad_norm"]),
      "tokens_per_s": tokens / elapsed,
      "mfu": flops / elapsed / (metrics.peak_flops(t.peak_flops) * jax.device_count()),
    }
    if "expert_load" in fetched[-1]:
      record["expert_load_max_over_mean"] = load_balance([m.pop("expert_load") for m in fetched])
    record |= {k: v for k, v in fetched[-1].items() if k not in record}
    self._check_finite(record)
    return record

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
