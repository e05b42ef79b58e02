"""Command-line plumbing the scripts share: absl config flags with one-line errors."""

import ast
import importlib.util
import pathlib
import sys

from absl import flags

from configs import moved


def resolve_config_path(spec: str) -> str:
  """FILE.py[:PRESET] with FILE found relative to the current directory first,
  then beside the installed `configs` package (so `configs/llama3.py:tiny` works
  from any directory once the package is installed)."""
  path, colon, preset = spec.partition(":")
  if pathlib.Path(path).is_file() or pathlib.Path(path).is_absolute():
    return spec
  import configs  # noqa: PLC0415

  installed = pathlib.Path(configs.__file__).resolve().parents[1] / path
  return f"{installed}{colon}{preset}" if installed.is_file() else spec


def _resolve_config_flag(argv) -> list[str]:
  """argv with the --config value resolved (`resolve_config_path`)."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + resolve_config_path(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_config_path(out[i + 1])
  return out


def load_config(spec: str, overrides=()):
  """The unlocked config of FILE.py[:PRESET] with `--config.a.b=value` overrides
  applied (each value parsed as its field's type); one-line errors."""
  path, _, preset = resolve_config_path(spec).partition(":")
  if not pathlib.Path(path).is_file():
    sys.exit(f"error: --config {spec}: no file {path!r}; use configs/FAMILY.py:PRESET")
  module_spec = importlib.util.spec_from_file_location("_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(preset) if preset else module.get_config()
  config.unlock()
  for arg in overrides:
    message = unknown_override(["", f"--config={spec}", arg])
    if message:
      sys.exit(f"error: {message}")
    key, _, value = arg[len("--config.") :].partition("=")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = _parsed(value, node[leaf])
  return config


def _parsed(value: str, default):
  kind = type(default)
  if kind is bool:
    return value.lower() in ("true", "1")
  if kind in (int, float):
    return kind(float(value) if kind is float else int(value))
  if kind is tuple:
    return tuple(ast.literal_eval(value)) if value else ()
  return value


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
  spec = importlib.util.spec_from_file_location("_config", resolve_config_path(path))
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
  argv = _resolve_config_flag(argv)
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
