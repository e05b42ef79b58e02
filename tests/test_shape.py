"""The shape of the code, measured from the source (ast), not by eye: no module
over 400 lines, no function in modeling/, trainer/ or parallelism/ over 60
lines, no import cycle anywhere (imports inside functions count too), one
train-step builder that train, bench and plan all call, and generic model code
that names no family's mechanism."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "modeling", "pallas_kernels", "parallelism", "scripts", "trainer", "tests")
FUNCTION_PACKAGES = ("modeling", "trainer", "parallelism")
MAX_MODULE, MAX_FUNCTION = 400, 60


def _modules() -> dict[str, pathlib.Path]:
  files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
  return {
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in files
  }


def _imports(tree: ast.AST, modules: dict) -> set[str]:
  """Our modules a module imports, anywhere in it ("from a import b" may name the
  submodule a.b or an attribute of a)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      subs = {f"{node.module}.{a.name}" for a in node.names}
      found |= (subs & set(modules)) | ({node.module} if subs - set(modules) else set())
  return found & set(modules)


def _cycles(graph: dict[str, set]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return out


def test_no_import_cycle():
  modules = _modules()
  graph = {m: _imports(ast.parse(p.read_text()), modules) - {m} for m, p in modules.items()}
  assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_over_400_lines():
  long = {
    str(p.relative_to(ROOT)): n
    for p in _modules().values()
    if (n := len(p.read_text().splitlines())) > MAX_MODULE
  }
  assert long == {}


def test_no_function_over_60_lines_in_the_packages():
  long = {}
  for name, path in _modules().items():
    if name.split(".")[0] not in FUNCTION_PACKAGES:
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION:
          long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
  assert long == {}


@pytest.mark.parametrize("caller", ["trainer/trainer.py", "trainer/plan.py", "scripts/bench.py"])
def test_train_bench_and_plan_build_the_step_with_the_one_builder(caller):
  tree = ast.parse((ROOT / caller).read_text())
  builds = [
    n
    for n in ast.walk(tree)
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "build"
    and isinstance(n.func.value, ast.Name) and n.func.value.id in ("step", "step_lib")
  ]  # fmt: skip
  assert builds, f"{caller} does not call trainer.step.build"


def test_only_the_builder_defines_a_train_step():
  defined = {
    f"{p.relative_to(ROOT)}:{n.name}"
    for name, p in _modules().items()
    if not name.startswith("tests")
    for n in ast.walk(ast.parse(p.read_text()))
    if isinstance(n, ast.FunctionDef) and "train_step" in n.name
  }
  assert defined == {"trainer/step.py:make_train_step", "trainer/step.py:train_step"}


@pytest.mark.parametrize("module", ["modeling/blocks.py", "modeling/decoder.py"])
def test_generic_block_and_decoder_name_no_exotic_mechanism(module):
  """Gemma 3n's AltUp, per-layer embeddings, KV sharing and MatFormer live behind
  the stream kinds (modeling/streams.py) and the per-layer context."""
  source = (ROOT / module).read_text().lower()
  for word in ("altup", "per_layer", "kv_share", "matformer", "mlp_width", "laurel"):
    assert word not in source, f"{module} mentions {word}"
