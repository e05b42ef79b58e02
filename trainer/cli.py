"""Command-line plumbing the scripts share: absl config flags with one-line errors."""

import importlib.util
import sys

from absl import flags

from configs import moved


def unknown_override(argv) -> str | None:
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
      key, _, value = arg[len("--config.") :].partition("=")
      hint = moved.message(key, value or None)
      if hint:
        return hint
      node = config
      for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
          valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
          return f"unknown config key {key!r} in {arg!r}; valid keys here: {valid}"
        node = node[part]
  return None


def parse_flags(argv):
  """absl flag parsing with one-line errors for bad presets and override keys."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - config files raise anything while loading.
    message = None
    if isinstance(e, (AttributeError, KeyError)):
      message = unknown_override(argv)
    if message is None:
      cause = e
      while cause.__cause__ or cause.__context__:
        cause = cause.__cause__ or cause.__context__
      message = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
    sys.exit(f"error: {message}")


def config_or_exit(config_flag):
  """The --config value; config_flags defers file errors to the first access."""
  if config_flag.value is None:
    sys.exit("error: --config is required")
  try:
    config = config_flag.value
    config.keys()
  except OSError as e:
    sys.exit(f"error: --config could not be loaded: {str(e).strip().splitlines()[-1].strip()}")
  return config
