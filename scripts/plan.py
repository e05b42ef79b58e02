"""Plan a run: params, per-device memory, KV cache and FLOPs of a config on a
mesh, without allocating the model.

  python scripts/plan.py --config configs/deepseek_v3.py:full --mesh fsdp=64,expert=8
      [--devices N] [--compile] [--json] [--config.train.batch_size=...]

--mesh overrides config.mesh (axes data, fsdp, tensor, expert, context; one may be -1,
then --devices says how many there are). --compile AOT-compiles one train step
for that mesh on fake CPU devices and reports XLA's memory analysis per device
and the collectives in the compiled HLO (in XLA:CPU's memory-minimising order, as
the fit table).

  python scripts/plan.py --table full --out benchmarks/results/fit.md

compiles every row of the fit table (benchmarks/fit.py: real presets on the
clusters they should train on) and writes it as markdown.
"""

import json
import math
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from parallelism.rules import MESH_AXES as AXES  # noqa: E402
from trainer import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/FAMILY.py:PRESET")
_MESH = flags.DEFINE_string("mesh", "", "Mesh sizes, e.g. data=2,fsdp=4 (overrides config.mesh).")
_DEVICES = flags.DEFINE_integer("devices", 0, "Device count; 0 = the mesh's product.")
_COMPILE = flags.DEFINE_bool("compile", False, "AOT-compile one train step on fake devices.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
_TABLE = flags.DEFINE_enum(
  "table", "", ["", "full", "pipeline", "tiny"],
  "Compile every row of benchmarks/fit.py's table (full: the real presets on their "
  "clusters; pipeline: the mesh.stage rows; tiny: the same on tiny presets) and print it "
  "as markdown (--out: a file).",
)  # fmt: skip
_OUT = flags.DEFINE_string("out", "", "With --table: write the markdown here.")


def _mesh_overrides(text: str) -> dict:
  sizes = {}
  for item in filter(None, text.split(",")):
    name, _, value = item.partition("=")
    if name not in AXES or not value.lstrip("-").isdigit():
      sys.exit(f"error: --mesh entry {item!r} is not AXIS=SIZE with AXIS in {', '.join(AXES)}")
    sizes[name] = int(value)
  return sizes


def _print_table(result: dict):
  from trainer.plan import human_bytes  # noqa: PLC0415

  mesh = " ".join(f"{k}={v}" for k, v in result["mesh"].items())
  print(f"{result['family']} on mesh {mesh}")
  st = result["step"]
  print(f"  step                batch {st['batch_size']} x seq {st['seq_len']} "
        f"in {st['microbatches']} micro-batch(es)")  # fmt: skip
  print(f"  params total        {result['params_total'] / 1e9:10.3f} B")
  print(f"  params active       {result['params_active'] / 1e9:10.3f} B")
  if result["params_mtp"]:
    print(f"  params MTP (extra)  {result['params_mtp'] / 1e9:10.3f} B")
  print(f"  train FLOPs / token {result['train_flops_per_token']:10.3e}")
  print(f"  KV / token / layer  {human_bytes(result['kv_bytes_per_token_per_layer']):>12}")
  print(f"  KV / token (model)  {human_bytes(result['kv_bytes_per_token']):>12}")
  print("  per device:")
  for name, n in result["bytes_per_device"].items():
    print(f"    {name:<16}  {human_bytes(n):>12}")
  if "compiled" in result:
    print("  compiled step, XLA memory analysis per device:")
    for name, n in result["compiled"]["memory_per_device"].items():
      print(f"    {name:<16}  {human_bytes(n):>12}")
    collectives = result["compiled"]["collectives"]
    print("  collectives: " + (", ".join(f"{k} x{v}" for k, v in collectives.items()) or "none"))


def _table(name: str, out: str):
  """The fit table: each row compiled on fake CPU devices, then markdown."""
  from benchmarks import fit  # noqa: PLC0415

  rows = fit.ROWS[name]
  devices = max(row.devices for row in rows)
  os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}",
    fit.cpu_flags(),
  ])  # fmt: skip
  import jax  # noqa: PLC0415

  measured = []
  for row in rows:
    print(f"compiling {row.name} on {row.mesh} ...", file=sys.stderr, flush=True)
    try:
      measured.append(fit.measure(row, jax.devices()))
    except ValueError as e:
      sys.exit(f"error: {row.name}: {e}")
  notes = fit.PIPELINE_NOTES if name == "pipeline" else fit.NOTES
  text = fit.markdown(measured, f"Fit table ({name} presets)", notes)
  if out:
    pathlib.Path(out).write_text(text)
  print(text)


def main(argv):
  del argv
  if _TABLE.value:
    return _table(_TABLE.value, _OUT.value)
  config = cli.config_or_exit(_CONFIG)
  config.unlock()
  config.mesh.update(_mesh_overrides(_MESH.value))
  sizes = [config.mesh[a] for a in AXES]
  devices = _DEVICES.value or (0 if -1 in sizes else math.prod(sizes))
  if devices <= 0:
    sys.exit("error: --mesh has a -1 axis; give --devices")
  if _COMPILE.value:  # before JAX starts its CPU backend; compiled as the fit table is
    from benchmarks import fit  # noqa: PLC0415

    os.environ["XLA_FLAGS"] = " ".join([
      os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}",
      fit.cpu_flags(),
    ])  # fmt: skip
  from parallelism import mesh as parallelism_mesh  # noqa: PLC0415
  from parallelism import pipeline, rules  # noqa: PLC0415
  from parallelism.mesh import check_model_fits  # noqa: PLC0415
  from trainer import plan, precision  # noqa: PLC0415

  try:
    cfg = precision.model_config(config)
    mesh_sizes = parallelism_mesh.mesh_sizes(config.mesh, devices)
    check_model_fits(cfg, mesh_sizes)
    parallelism_mesh.check_context(config.train.seq_len, mesh_sizes)
    if _COMPILE.value:
      parallelism_mesh.check_step(config, mesh_sizes)
    pipeline.schedule(config, cfg, mesh_sizes["stage"])
    rules.with_overrides(config.mesh.rules)
  except ValueError as e:
    sys.exit(f"error: {e}")
  result = plan.plan(config, cfg, mesh_sizes)
  if _COMPILE.value:
    import jax  # noqa: PLC0415

    from parallelism.mesh import make_mesh  # noqa: PLC0415

    mesh = make_mesh(config.mesh, jax.devices()[:devices])
    result["compiled"] = plan.compile_step(config, cfg, mesh)
  if _JSON.value:
    print(json.dumps(result))
  else:
    _print_table(result)


def run():
  """The console entry point (pyproject.toml [project.scripts])."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
