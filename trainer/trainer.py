"""The Trainer: validated config -> mesh, sharded init (or restore), jitted
donated train step, eval, checkpoints, metrics.

`train_step(state, batch) -> (state, metrics)` is pure; logging, eval and
checkpoints live in the loop around it.
"""

import json
import math
import pathlib
import sys
import time

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from configs import moved
from modeling.attention import kernels
from parallelism.mesh import make_mesh
from trainer import checkpoint, checks, data_check, documents, metrics, precision, stopping
from trainer import mixture as mixture_lib
from trainer import pipeline as pipeline_lib
from trainer import step as step_lib
from trainer import workdir as workdir_lib
from trainer.checkpoint import Checkpointer
from trainer.checks import check_same_model, validate

# Steps in a row with a grad norm of exactly 0 before the run warns.
ZERO_GRAD_STEPS = 20


class NonFinite(FloatingPointError):
  """A step's loss or grad norm was nan/inf; the message is the one line to show."""


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
    "mfu": metrics.mfu_text(record.get("mfu", float("nan"))),
  }
  if "expert_load_max_over_mean" in record:
    fields["load_max"] = f"{max(record['expert_load_max_over_mean']):.2f}"
    fields["dropped"] = f"{record['dropped_frac']:.1%}"
  if "mtp_loss" in record:
    fields["mtp"] = "/".join(f"{v:.2f}" for v in record["mtp_loss"])
  if "indexer_kl" in record:
    fields["kl"] = f"{np.mean(record['indexer_kl']):.3f}"
  return fields


def resolve_scan_layers(config, saved: dict | None) -> str:
  """Decides compute.scan_layers=auto for this run and writes the decision into
  `config` (so the checkpoint's config records it); returns the log line. A resumed
  run keeps the layout its checkpoint (config `saved`) was written in: scanned
  layers' params are stacked along a `layers` axis, unrolled ones are not."""
  was = (saved or {}).get("compute", {}).get("scan_layers")
  if config.compute.scan_layers == "auto" and was in ("scan", "unroll"):
    config.compute.scan_layers = was
    return f"{'scanned' if was == 'scan' else 'unrolled'} (as the checkpoint was written)"
  scan, why = precision.scan_layers(config)
  config.compute.scan_layers = "scan" if scan else "unroll"
  return f"{'scanned' if scan else 'unrolled'} ({why})"


def saved_run_config(directory: pathlib.Path) -> dict | None:
  """The config of the newest readable committed step, in this version's layout
  (read from its file: no checkpoint manager before the run holds the workdir's lock)."""
  for step in checkpoint.committed_steps(directory)[:2]:
    try:
      saved = json.loads((directory / str(step) / "config" / "metadata").read_text())
    except (OSError, ValueError):
      continue
    return moved.migrate(saved)
  return None


class Trainer:
  """One run in one workdir. Construction checks everything that needs no compile
  (config, workdir, lock, data), then builds, initialises or restores; `run`
  trains. Faults end in one sentence and a safe state: see README "Faults"."""

  def __init__(self, config, workdir: str):
    self.config = config
    saved = saved_run_config(pathlib.Path(workdir) / "checkpoints")
    self.layers_note = resolve_scan_layers(config, saved)
    checks.cap_warmup(config, warn=jax.process_index() == 0)
    self.model_cfg = validate(config)
    self.data_note = checks.resolve_shuffle(config, saved, workdir)
    self.primary = jax.process_index() == 0
    self.workdir = workdir_lib.prepare(workdir)
    self.lock = workdir_lib.Lock(self.workdir)
    if self.primary:
      self.lock.acquire()
    k = config.checkpoint
    self.checkpointer = Checkpointer(
      str(self.workdir), k.every, k.keep, k.keep_every, k.save_timeout_s
    )
    self.stopper = stopping.Stopper(
      k.stop_timeout_s, self.checkpointer.describe_committed, self.lock.release
    ).__enter__()
    try:
      self._setup()
    except BaseException:
      self.close()
      raise

  def _setup(self):
    config, t = self.config, self.config.train
    self.config_dict = json.loads(config.to_json_best_effort())
    resumed = bool(checkpoint.committed_steps(self.checkpointer.directory))
    if resumed:
      saved = self.checkpointer.saved_config()
      if saved:
        check_same_model(saved, self.config_dict)
        for note in checks.resume_changes(saved, self.config_dict) if self.primary else ():
          print(note, flush=True)
    self.mesh = make_mesh(config.mesh)
    if self.primary:
      print(f"attention kernels: {kernels.describe(self.model_cfg.blocks)}", flush=True)
      print(f"layers: {self.layers_note}", flush=True)
      if options := precision.compiler_options(config, self.mesh.devices.flat[0].platform):
        print(f"step compiled with XLA options {options} (compute.cpu_ynnpack=False)", flush=True)
      if self.data_note:
        print(self.data_note, flush=True)
    self.program = step_lib.build(config, self.mesh, self.model_cfg)
    sched = self.program.model_cfg.pipeline
    if self.primary and (t.microbatches > 1 or sched):
      print(sched.describe() if sched else f"step: batch {t.batch_size} in {t.microbatches} "
            f"micro-batches of {t.batch_size // t.microbatches} (gradients accumulated)", flush=True)  # fmt: skip
    self.graphdef = self.program.graphdef  # nnx.merge(graphdef, params, model_state): the model
    self._train_step, self._eval_step = self.program.train_step, self.program.eval_step
    self.batch_sharding = self.program.batch_sharding
    # Multi-process: the rows of each global batch this process's devices hold.
    self.rows = local_rows(self.batch_sharding, (t.batch_size, t.seq_len))
    shards = config.data.shards or jax.process_count()
    data_check.check_yields(
      config.data, batch_size=t.batch_size, seq_len=t.seq_len, shards=shards, rows=self.rows,
      warn=self._say,
    )  # fmt: skip
    # Input this process skipped (empty, invalid, ...); bad records raise unless skipped.
    self.skipped = documents.Skipped(strict=not config.data.skip_bad_records)
    # Each process reads only its rows' blocks of every batch (see data.make_dataset).
    self.dataset = pipeline_lib.make_dataset(
      config.data, split="train", batch_size=t.batch_size, seq_len=t.seq_len, seed=t.seed,
      shards=shards, rows=self.rows, skipped=self.skipped,
    )  # fmt: skip
    self.data_iter = iter(self.dataset)
    self.source_names = mixture_lib.names(config.data)  # (a mixture's sources)
    self._tokens_seen, self._data_wait = None, 0.0
    self.profiler = metrics.Profiler(
      config.logging.profile_steps, t.steps, self.workdir, self.primary
    )
    if resumed:  # restored straight into the abstract state's shardings: no init first
      self.state = self.checkpointer.restore(
        self.program.abstract_state, self.data_iter, config.checkpoint.fallback, self._say
      )
      return
    self.state = self.program.init_state(t.seed)
    if config.checkpoint.init_from:
      self._init_from(config.checkpoint.init_from)

  def _say(self, message: str):
    if self.primary:
      print(message, file=sys.stderr, flush=True)

  def close(self):
    """Gives back the signal handlers and the workdir lock (run() does this itself)."""
    self.stopper.__exit__(None, None, None)
    self.lock.release()

  def _init_from(self, workdir: str):
    """Starts from another run's latest weights, or a Hugging Face directory's
    (each device reading its own shards); the optimizer state stays fresh."""
    weights = {k: self.program.abstract_state[k] for k in ("params", "model_state")}
    restored, missing = checkpoint.init_weights(workdir, weights, self.config.model, self.graphdef)
    for key, tree in restored.items():
      self.state[key] = _merge(self.state[key], tree)
    if missing and self.primary:
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
    """Trains to train.steps, or until SIGTERM/SIGINT (then saves the step it is on
    and returns with `preempted` True); returns the last train and eval records
    (`finished` True if the workdir's run had already reached train.steps)."""
    try:
      start = int(self.state["step"])
      if start >= self.config.train.steps:
        self._say(f"the run in {self.workdir} is finished (step {start} of train.steps="
                  f"{self.config.train.steps}); raise --config.train.steps to train on, or "
                  "use a new --workdir")  # fmt: skip
        self.checkpointer.close()
        return {"train": {}, "eval": {}, "preempted": False, "finished": True}
      return self._run(start)
    finally:
      self.close()

  def _run(self, start: int) -> dict:
    cfg, t = self.config, self.config.train
    if self.primary:  # the config this run trains with (each checkpoint also holds its own)
      (self.workdir / "config.json").write_text(self.config.to_json_best_effort(indent=2))
    writer = metrics.Writer(str(self.workdir), self.primary, cfg.logging, self.config_dict)
    eval_data = pipeline_lib.eval_batches(
      cfg.data, batch_size=t.batch_size, seq_len=t.seq_len, max_batches=t.eval_batches,
      skipped=self.skipped,
    )  # fmt: skip
    bar = tqdm.tqdm(
      total=t.steps, initial=start, disable=not (cfg.logging.progress_bar and self.primary),
      dynamic_ncols=True,
    )  # fmt: skip
    self._unchecked, self._zero_grads = [], 0  # steps whose finite flag is not yet read
    try:
      return self._loop(start, writer, eval_data, bar)
    except checkpoint.SaveFailed:
      raise  # a failed save may never finish: do not wait for it
    except BaseException:
      self._close_checkpointer()
      raise
    finally:
      bar.close()
      writer.close()

  def _loop(self, start: int, writer, eval_data, bar) -> dict:
    t = self.config.train
    last_train, last_eval, pending, preempted, reported = {}, {}, [], False, 0
    tic = time.perf_counter()
    for step in range(start + 1, t.steps + 1):
      # The first call compiles ("setup": a signal then exits at once; nothing new yet).
      self.profiler.before(step)
      self.state, step_metrics = self._train_step(self.state, self.put(self._next_batch()))
      self.profiler.after(step, step_metrics)
      self.stopper.phase = "train"
      pending.append(step_metrics)
      self._unchecked.append((step, step_metrics))
      self.checkpointer.check()  # a failed background save stops the run here
      bar.update(1)
      if step % t.log_every == 0 or step == t.steps:
        last_train = self._train_record(step, jax.device_get(pending), time.perf_counter() - tic)
        reported = self._report_skipped(last_train, reported, bar)
        last_train |= mixture_lib.logged(self.source_names, self._tokens_seen)
        writer.write(last_train)  # then stop if a step was nan/inf (the record shows it)
        self._check_finite()
        bar.set_postfix(progress_fields(last_train))
        pending, tic = [], time.perf_counter()
      if eval_data and ((t.eval_every and step % t.eval_every == 0) or step == t.steps):
        last_eval = {"step": step, "eval_loss": self.evaluate(eval_data)}
        writer.write(last_eval)
        if self.primary:
          bar.write(f"step {step}: eval_loss {last_eval['eval_loss']:.4f}")
        tic, self._data_wait = time.perf_counter(), 0.0
      preempted = self._preempted(step)
      if self.checkpointer.due(step) or step == t.steps or preempted:
        self._check_finite()  # never save a state after a nan/inf step
        self.stopper.phase = "save"
        self.checkpointer.save(step, self.state, self.data_iter, self.config_dict)
        self.stopper.phase = "train"
      if preempted:
        self.checkpointer.close()
        if self.primary:
          bar.write(f"{self.stopper.signal_name}: saved step {step}; run the same command "
                    "to resume")  # fmt: skip
        break
    self.stopper.phase = "save"
    self.checkpointer.close()
    return {"train": last_train, "eval": last_eval, "preempted": preempted}

  def _close_checkpointer(self):
    """Waits for saves in flight (all of finite states) so they commit."""
    try:
      self.checkpointer.close()
    except checkpoint.SaveFailed as e:
      self._say(f"error: {e}")

  def _check_finite(self):
    """Raises NonFinite at the first unchecked step whose loss or grad norm was
    nan/inf (one fetch of a few scalars; logging and saving sync anyway)."""
    steps = [s for s, _ in self._unchecked]
    flags = jax.device_get([(m["finite"], m["loss"], m["grad_norm"]) for _, m in self._unchecked])
    self._unchecked = []
    for step, (finite, loss, grad_norm) in zip(steps, flags, strict=True):
      if not finite:
        self._close_checkpointer()
        raise NonFinite(
          f"the loss ({float(loss)}) or grad norm ({float(grad_norm)}) at step {step} is not "
          f"finite, so nothing after it was saved; the last committed checkpoint is "
          f"{self.checkpointer.describe_committed()}; lower optim.lr (now "
          f"{self.config.optim.lr:g}) or raise optim.warmup_steps and run the same command "
          "to resume from it"
        )
      self._zero_grads = self._zero_grads + 1 if float(grad_norm) == 0.0 else 0
      if self._zero_grads == ZERO_GRAD_STEPS:
        self._say(f"warning: the grad norm has been exactly 0 for {ZERO_GRAD_STEPS} steps "
                  f"(to step {step}): nothing is training; check optim.trainable, the data "
                  "weights and the learning rate")  # fmt: skip

  def _next_batch(self) -> dict:
    """The next batch; the time spent waiting for it adds to data_wait, and a
    mixture's tokens_seen (per source) is kept aside for the log."""
    tic = time.perf_counter()
    batch = next(self.data_iter)
    self._data_wait += time.perf_counter() - tic
    self._tokens_seen = batch.pop("tokens_seen", None)
    return batch

  def _train_record(self, step: int, fetched: list, elapsed: float) -> dict:
    """The metrics record of the steps since the last one."""
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
      "data_wait": self._data_wait / elapsed,  # fraction of the time spent waiting for data
    }
    if math.isnan(record["mfu"]):  # a device without a known peak: no MFU (train.peak_flops)
      del record["mfu"]
    self._data_wait = 0.0
    if "expert_load" in fetched[-1]:
      record["expert_load_max_over_mean"] = load_balance([m.pop("expert_load") for m in fetched])
    record |= {k: v for k, v in fetched[-1].items() if k not in record and k != "finite"}
    return record

  def _report_skipped(self, record: dict, reported: int, bar) -> int:
    """Adds this process's skipped-input counts to the record (when any) and prints
    them whenever they grew; returns the total reported."""
    total = self.skipped.total()
    if total:
      record |= {f"skipped_{r}": n for r, n in self.skipped.counts.items() if n}
    if total > reported and self.primary:
      bar.write(f"data: skipped {self.skipped.summary()}")
    return total

  def _preempted(self, step: int) -> bool:
    """Whether to save and stop after `step`. With several processes, all agree
    at log steps (one all-gather of a flag) so they save the same step."""
    if jax.process_count() == 1:
      return self.stopper.requested
    if step % self.config.train.log_every:
      return False
    flags = multihost_utils.process_allgather(np.array(self.stopper.requested))
    return bool(np.any(flags))
