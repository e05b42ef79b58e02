"""Packaging: every third-party package the code imports is declared in
pyproject.toml (dependencies or an extra), the console commands work from any
directory with config paths found beside the installed package, and
scripts/bench.py takes the other scripts' --config.a.b=value overrides."""

import ast
import importlib.metadata
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT

_OURS = {"configs", "modeling", "parallelism", "pallas_kernels", "trainer", "scripts",
         "benchmarks", "tests"}  # fmt: skip


def _declared() -> set[str]:
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  specs = project["dependencies"] + [
    d for e in project["optional-dependencies"].values() for d in e
  ]
  return {re.split(r"[\[<>=!~ ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def test_every_imported_package_is_declared():
  names = set()
  for folder in _OURS - {"tests"}:
    for path in (ROOT / folder).rglob("*.py"):
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
          names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
          names.add(node.module.split(".")[0])
  third_party = names - _OURS - set(sys.stdlib_module_names)
  distributions = importlib.metadata.packages_distributions()
  declared, missing = _declared(), []
  for name in sorted(third_party):
    dists = {d.lower().replace("_", "-") for d in distributions.get(name, [name])}
    if not dists & declared:
      missing.append(f"{name} ({', '.join(sorted(dists))})")
  assert not missing, f"imported but not in pyproject.toml: {missing}"


def test_console_commands_run_from_any_directory(tmp_path):
  command = pathlib.Path(sys.executable).parent / "jaxfrontier-train"
  if not command.exists():
    pytest.fail("jaxfrontier-train is not installed: pip install -e '.[test]' installs it")
  out = subprocess.run(
    [str(command), "--config", "configs/llama3.py:tiny", "--config.train.steps=5",
     "--print_config"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert out.returncode == 0, out.stderr[-2000:]
  assert "  steps: 5\n" in out.stdout


def test_bench_configs_take_overrides_from_any_directory(tmp_path, monkeypatch):
  from trainer import cli  # noqa: PLC0415

  monkeypatch.chdir(tmp_path)  # configs/ found beside the installed package
  config = cli.load_config("configs/llama3.py:tiny", ["--config.train.batch_size=4",
                           "--config.compute.scan_layers=scan", "--config.mesh.rules=heads="])  # fmt: skip
  assert (config.train.batch_size, config.compute.scan_layers) == (4, "scan")
  with pytest.raises(SystemExit, match="unknown config key 'train.batchsize'"):
    cli.load_config("configs/llama3.py:tiny", ["--config.train.batchsize=4"])
  with pytest.raises(SystemExit, match="is not a valid int"):
    cli.load_config("configs/llama3.py:tiny", ["--config.train.batch_size=four"])
