"""Train a model from a config.

  python scripts/train.py --config configs/llama3.py:tiny --workdir runs/demo \
      [--config.train.steps=200 --config.optim.lr=3e-4 ...]

Running it again with the same --workdir resumes from the last checkpoint.
"""

import importlib.util
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "configs/FAMILY.py:PRESET", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, config and checkpoints.")


def _unknown_override(argv) -> str | None:
  """The first --config.a.b=... override whose key the chosen config lacks, with a hint."""
  config_arg = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      config_arg = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      config_arg = argv[i + 1]
  if config_arg is None:
    return None
  path, _, preset = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset) if preset else module.get_config()
  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config.") :].split("=", 1)[0]
      node = config
      for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
          valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
          return f"unknown config key {key!r} in {arg!r}; valid keys here: {valid}"
        node = node[part]
  return None


def _parse_flags(argv):
  """absl flag parsing with one-line errors for bad presets and override keys."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - config files raise anything while loading.
    message = None
    if isinstance(e, (AttributeError, KeyError)):
      message = _unknown_override(argv)
    if message is None:
      cause = e
      while cause.__cause__ or cause.__context__:
        cause = cause.__cause__ or cause.__context__
      message = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
    sys.exit(f"error: {message}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO.
  from trainer.trainer import Trainer

  if _CONFIG.value is None or _WORKDIR.value is None:
    sys.exit("error: both --config and --workdir are required")
  try:
    config = _CONFIG.value
    config.keys()
  except OSError as e:  # config_flags defers file errors to first access.
    sys.exit(f"error: --config could not be loaded: {str(e).strip().splitlines()[-1].strip()}")
  try:
    trainer = Trainer(config, _WORKDIR.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  result = trainer.run()
  if result["eval"]:
    print(
      f"held-out eval loss: {result['eval']['eval_loss']:.4f} nats/token "
      f"at step {result['eval']['step']}"
    )


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
