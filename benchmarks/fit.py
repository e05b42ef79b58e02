"""The fit table: does each real preset train on 80 GB devices, and on what mesh?

`scripts/plan.py --table` AOT-compiles one train step per row on fake CPU devices
(the run's own step, `trainer/plan.py`) and writes a markdown table: per-device
peak from XLA's memory analysis, the state's share of it, the collectives, and the
preset's choices (remat, micro-batches, layer scan). A row gives only its mesh,
`train.seq_len` and `train.batch_size`: everything else is the preset's default.
A row over the limit says why: the state alone (more devices, pipeline stages or
offload would fit it) or the step's temporaries (measured, with the largest kind).
"""

import dataclasses
import importlib
import math

from trainer.plan import human_bytes

LIMIT = 70 * 2**30  # per-device budget on an 80 GB device (the rest: runtime, fragmentation)


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  config: str  # FAMILY:PRESET (configs/FAMILY.py)
  mesh: dict
  seq_len: int
  batch_size: int

  @property
  def devices(self) -> int:
    return math.prod(self.mesh.values())


ROWS = {
  "full": [
    Row("Llama-3 8B", "llama3:8b", dict(fsdp=8), 8192, 8),
    Row("Llama-3 70B", "llama3:70b", dict(fsdp=64), 8192, 64),
    Row("Llama-3 8B, 128k context", "llama3:8b", dict(fsdp=8, context=8), 131_072, 8),
    Row("Qwen3-235B-A22B", "qwen3_moe:235b_a22b", dict(fsdp=8, expert=8), 4096, 64),
    Row("DeepSeek-V3 (with MTP)", "deepseek_v3:full", dict(fsdp=32, expert=8), 4096, 256),
    Row("Kimi K2", "kimi_k2:full", dict(fsdp=64, expert=8), 4096, 512),
  ],
  # The same program on tiny presets: what CI runs to keep the command working.
  "tiny": [
    Row("Llama-3 tiny", "llama3:tiny", dict(fsdp=2), 256, 4),
    Row("Llama-3 tiny, context 2", "llama3:tiny", dict(data=2, context=2), 1024, 2),
    Row("DeepSeek-V3 tiny", "deepseek_v3:tiny", dict(fsdp=2, expert=2), 256, 4),
  ],
}


def load(row: Row):
  """The row's config: the preset, its mesh, seq_len and batch_size; nothing else."""
  family, preset = row.config.split(":")
  config = importlib.import_module(f"configs.{family}").get_config(preset)
  config.unlock()
  config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, "expert": 1, "context": 1} | row.mesh)
  config.train.update(seq_len=row.seq_len, batch_size=row.batch_size)
  return config


def measure(row: Row, devices) -> dict:
  """Compiles the row's train step on `devices` (fake CPU devices, at least
  row.devices of them) -> the table's numbers."""
  from parallelism import mesh as mesh_lib  # noqa: PLC0415 - after the device count is set
  from trainer import plan, precision  # noqa: PLC0415

  config = load(row)
  cfg = precision.model_config(config)
  mesh = mesh_lib.make_mesh(config.mesh, devices[: row.devices])
  sizes = dict(mesh.shape)
  mesh_lib.check_model_fits(cfg, sizes)
  mesh_lib.check_batch_fits(row.batch_size, sizes)
  mesh_lib.check_microbatches(row.batch_size, config.train.microbatches, sizes)
  mesh_lib.check_context(row.seq_len, sizes)
  state = plan.memory_plan(config, cfg, sizes)["total"]
  compiled = plan.compile_step(config, cfg, mesh)
  memory = compiled["memory_per_device"]
  ways = sizes["data"] * sizes["fsdp"] * sizes["expert"]
  return {
    "row": row,
    "mesh": mesh,
    "rows_per_microbatch": row.batch_size // ways // config.train.microbatches,
    "moe": any(hasattr(b.mlp, "num_experts") for b in cfg.blocks),
    "remat": config.compute.remat,
    "microbatches": config.train.microbatches,
    "peak": memory["peak"],
    "state": state,
    "temp": memory["temp"],
    "collectives": compiled["collectives"],
    "whole_expert_gathers": compiled["whole_expert_gathers"],
  }


def verdict(m: dict) -> str:
  """'fits', or why not and what would make it fit."""
  if m["peak"] <= LIMIT:
    return "fits"
  if m["state"] > LIMIT:
    return (
      f"no: params + grads + optimizer state alone need {human_bytes(m['state'])} per device; "
      "more devices on fsdp, pipeline stages or optimizer-state offload would fit it"
    )
  fixes = [] if m["remat"] == "full" else ["remat=full"]
  if m.get("rows_per_microbatch", 1) > 1:
    fixes.append("more train.microbatches")
  if m.get("moe"):
    fixes.append("a compute.moe_ep_capacity_factor (the all-to-all buffers are sized for "
                 "every token going to one device)")  # fmt: skip
  fixes.append("pipeline stages (not built yet)")
  why = f"no: the step's temporaries are {human_bytes(m['temp'])} per device"
  if m["whole_expert_gathers"]:
    why += f" ({m['whole_expert_gathers']} all-gathers of whole expert weights)"
  return f"{why}; what would cut them: {', or '.join(fixes)}"


def markdown(measured: list[dict], title: str) -> str:
  lines = [
    f"# {title}",
    "",
    "Each row: `scripts/plan.py --table` AOT-compiling one train step on fake CPU "
    "devices (XLA's memory analysis per device; budget 70 GiB of an 80 GB device). "
    "A row gives only mesh, seq_len and batch_size; remat and micro-batches are the "
    "preset's defaults.",
    "",
    "| model | mesh | seq x batch | remat | micro-batches | peak / device | state / device "
    "| fits? | collectives |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for m in measured:
    row = m["row"]
    mesh = ",".join(f"{k}={v}" for k, v in row.mesh.items())
    coll = ", ".join(f"{k} x{v}" for k, v in m["collectives"].items()) or "none"
    lines.append(
      f"| {row.name} | {mesh} | {row.seq_len} x {row.batch_size} | {m['remat']} "
      f"| {m['microbatches']} | {human_bytes(m['peak'])} | {human_bytes(m['state'])} "
      f"| {verdict(m)} | {coll} |"
    )
  return "\n".join(lines + ["", NOTES]) + "\n"


NOTES = """MoE rows: the experts' grouped matmul no longer multiplies by a per-block copy of
the weights (past 256 MiB it scans over the blocks, `modeling/layers/grouped.py`).
What remains over budget is the expert-parallel dispatch: its all-to-all buffers
are sized so that every token could go to one device (dropless), and each layer's
experts are all-gathered over `fsdp` before their matmuls. Keeping the expert
weights sharded along `expert_mlp` inside the expert-parallel region is still to do."""
