"""Checks of a run's config before anything compiles, and of a resume against
the checkpoint it continues: each a ValueError naming the field and the fix,
or a notice of what changed."""

import sys

import jax
from flax import traverse_util

from configs import base, moved
from parallelism import pipeline, rules
from parallelism.mesh import check_model_fits, check_step, mesh_sizes
from trainer import data, documents, metrics, objective, optim, precision


def validate(config):
  """Every check that needs no compile; raises one ValueError naming the field."""
  model_cfg = precision.model_config(config)
  t = config.train
  for name in ("steps", "batch_size", "seq_len", "log_every", "eval_batches"):
    if t[name] <= 0:
      raise ValueError(f"train.{name}={t[name]} must be positive")
  if not 0 <= t.seed < 2**32:
    raise ValueError(f"train.seed={t.seed} must be in [0, 2**32)")
  if t.eval_every < 0:
    raise ValueError(f"train.eval_every={t.eval_every} must be >= 0 (0 = only at the end)")
  _check_checkpoint(config.checkpoint)
  optim.validate(config.optim, t.steps)
  objective.validate(config, model_cfg)
  metrics.check_logging(config.logging)
  _check_qk_clip(config)
  for source in data.source_configs(config.data):  # (Parquet / Arrow schemas: columns fail here)
    data.split_items(source)
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
  check_step(config, shape)
  pipeline.schedule(config, model_cfg, shape["stage"])
  return model_cfg


def _check_checkpoint(k):
  if k.every < 0 or k.keep_every < 0:
    raise ValueError(f"checkpoint.every={k.every} and checkpoint.keep_every={k.keep_every} "
                     "must be >= 0 (0 = only at the end / none)")  # fmt: skip
  if k.keep < 1:
    raise ValueError(f"checkpoint.keep={k.keep} must be >= 1 (the newest step is always kept)")
  for name in ("stop_timeout_s", "save_timeout_s"):
    if not k[name] > 0:
      raise ValueError(f"checkpoint.{name}={k[name]} must be a positive number of seconds")


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


# Fields whose change makes the data stream differ from an uninterrupted run's.
_DATA_ORDER = ("train.batch_size", "train.seq_len", "train.seed", "data")
# Fields that say where and how to report, not what is trained.
_IGNORED = ("logging", "checkpoint", "train.log_every", "train.eval_every",
            "train.eval_batches", "train.peak_flops")  # fmt: skip


def resume_changes(saved: dict, current: dict) -> list[str]:
  """One notice per setting outside `model` that differs from the checkpoint's,
  saying whether it breaks an exact resume."""
  before = traverse_util.flatten_dict(moved.migrate(saved), sep=".")
  now = traverse_util.flatten_dict(current, sep=".")
  notes = []
  for key in sorted(set(before) & set(now)):
    if key.startswith("model.") or key.startswith(_IGNORED) or before[key] == now[key]:
      continue
    if key.startswith(_DATA_ORDER):
      effect = "the batches from here on differ from an uninterrupted run's (not an exact resume)"
    else:
      effect = "applies from this step on"
    notes.append(f"resuming with {key} changed from {before[key]!r} to {now[key]!r}: {effect}")
  return notes


def resolve_shuffle(config, saved: dict | None, workdir: str) -> str | None:
  """The data iterator's saved state has the shape of its pipeline, with or without
  the row shuffle: a checkpoint from before data.shuffle_tokens existed resumes
  unshuffled (returns that note); turning the shuffle on or off in a resume is an
  error naming the field."""
  data_was, now = (saved or {}).get("data"), config.data.shuffle_tokens
  if data_was is None or (data_was.get("shuffle_tokens", 0) > 0) == (now > 0):
    return None
  if "shuffle_tokens" not in data_was:
    config.data.shuffle_tokens = 0
    return "data.shuffle_tokens=0: the checkpoint predates the row shuffle (its data position is in unshuffled rows)"
  raise ValueError(
    f"data.shuffle_tokens={now} but the checkpoints in {workdir} were written with "
    f"{data_was['shuffle_tokens']}: turning the row shuffle on or off changes the saved "
    f"data position's shape; resume with --config.data.shuffle_tokens="
    f"{data_was['shuffle_tokens']}, or train in a new workdir"
  )


def cap_warmup(config, warn: bool = False) -> str | None:
  """A run no longer than its warmup (a smoke run's --config.train.steps=3) warms
  up for a tenth of its steps instead; returns the warning (printed to stderr
  if `warn`), if any."""
  o, steps = config.optim, config.train.steps
  if steps < 1 or o.warmup_steps < steps:
    return None
  was, o.warmup_steps = o.warmup_steps, steps // 10
  note = (
    f"warning: optim.warmup_steps={was} is not below train.steps={steps}; warming up "
    f"for {o.warmup_steps} steps (a tenth of the run)"
  )
  if warn:
    print(note, file=sys.stderr, flush=True)
  return note
