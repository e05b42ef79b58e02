"""Command-line plumbing the scripts share: absl config flags with one-line errors."""

import ast
import importlib.util
import pathlib
import sys

from absl import flags

from configs import moved


def _config_arg(argv) -> str | None:
  """The value of --config (FILE.py:PRESET), if given."""
  config_arg = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      config_arg = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      config_arg = argv[i + 1]
  return config_arg


def unknown_override(argv) -> str | None:
  """The first --config.a.b=... override whose key the chosen config lacks, or whose
  value is not of the field's type, with a hint."""
  config_arg = _config_arg(argv)
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
      wrong = _wrong_type(key, value, node)
      if wrong:
        return wrong
  return None


def _wrong_type(key: str, value: str, default) -> str | None:
  """A message if `value` cannot be the type of the field whose default is `default`."""
  kind = type(default)
  try:
    if kind is bool:
      ok = value.lower() in ("true", "false", "1", "0")
    elif kind in (int, float):
      kind(float(value) if kind is float else int(value))
      ok = True
    elif kind is tuple:
      ok = value == "" or isinstance(ast.literal_eval(value), (tuple, list))
    else:
      return None
  except (ValueError, SyntaxError):
    ok = False
  if not ok and kind is tuple:
    return (f"--config.{key}={value!r} is not a valid tuple: write a Python tuple, e.g. "
            f"--config.{key}=\"(...)\" (default {default!r})")  # fmt: skip
  if ok:
    return None
  return (f"--config.{key}={value!r} is not a valid {kind.__name__}: {key} takes "
          f"{kind.__name__} values (default {default!r})")  # fmt: skip


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def parse_flags(argv):
  """absl flag parsing with one-line errors for bad presets, override keys and
  override values; --help prints the flags and exits 0."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    full = "--helpfull" in argv
    print(flags.FLAGS.get_help() if full else flags.FLAGS.main_module_help())
    sys.exit(0)
  config_arg = _config_arg(argv)
  if config_arg and not pathlib.Path(config_arg.partition(":")[0]).is_file():
    sys.exit(f"error: --config {config_arg}: no file {config_arg.partition(':')[0]!r}; "
             "use configs/FAMILY.py:PRESET (e.g. configs/llama3.py:tiny)")  # fmt: skip
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - config files raise anything while loading.
    message = None
    if isinstance(e, (AttributeError, KeyError, ValueError, TypeError, flags.Error)):
      try:
        message = unknown_override(argv)
      except Exception:  # noqa: BLE001 - the config itself fails: report the first error
        message = None
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
