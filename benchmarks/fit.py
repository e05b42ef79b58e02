"""The fit table: does each real preset train on 80 GB devices, and on what mesh?

`scripts/plan.py --table` AOT-compiles one train step per row on fake CPU devices
(the run's own step, `trainer/plan.py`) and writes a markdown table: per-device
peak from XLA's memory analysis, the state's share of it, the collectives, and the
preset's choices (remat, micro-batches, loss chunks). A row gives only its mesh,
`train.seq_len` and `train.batch_size` (and any overrides it names, shown in the
table; the full rows name none): everything else is the preset's default.
A row over the limit says why: the state alone (more devices, pipeline stages or
offload would fit it) or the step's temporaries (measured, with the largest kind).
"""

import dataclasses
import importlib
import math
import os
import subprocess
import sys

from trainer.plan import human_bytes

LIMIT = 70 * 2**30  # per-device budget on an 80 GB device (the rest: runtime, fragmentation)
EP_BUFFERS = {"compute.moe_ep_capacity_factor": 2.0}  # the large MoE presets' own choice
# XLA:CPU's default scheduler orders the program for concurrency, keeping independent
# ops' buffers live together (a 5-layer DeepSeek-V3 on 256 devices: 128.8 GiB of
# temporaries, 81.9 GiB in memory order); GPU and TPU schedulers bound memory, so the
# table compiles in memory order where this XLA has the flag (read at backend start).
MEMORY_ORDER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def cpu_flags() -> str:
  """MEMORY_ORDER if this jaxlib knows the flag (an unknown XLA flag is fatal), else ''."""
  env = dict(os.environ, XLA_FLAGS=MEMORY_ORDER, JAX_PLATFORMS="cpu")
  probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                         capture_output=True, timeout=300)  # fmt: skip
  return MEMORY_ORDER if probe.returncode == 0 else ""


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  config: str  # FAMILY:PRESET (configs/FAMILY.py)
  mesh: dict
  seq_len: int
  batch_size: int
  overrides: dict = dataclasses.field(default_factory=dict)  # {"section.field": value}

  @property
  def devices(self) -> int:
    return math.prod(self.mesh.values())


ROWS = {
  "full": [
    Row("Llama-3 8B", "llama3:8b", dict(fsdp=8), 8192, 8),
    Row("Llama-3 70B", "llama3:70b", dict(fsdp=64), 8192, 64),
    Row("Llama-3 8B, 128k context", "llama3:8b", dict(fsdp=8, context=8), 131_072, 8),
    # MoE rows: 64-way expert parallelism, as DeepSeek-V3 trained; the presets size
    # the all-to-all buffers at 2x a device's mean load (moe_ep_capacity_factor).
    Row("Qwen3-235B-A22B", "qwen3_moe:235b_a22b", dict(expert=64), 4096, 64),
    Row("DeepSeek-V3 (with MTP)", "deepseek_v3:full", dict(fsdp=4, expert=64), 4096, 256),
    # The same 256 devices with 8-way expert parallelism: 32 experts a device.
    Row("DeepSeek-V3 (with MTP), 8-way EP", "deepseek_v3:full", dict(fsdp=32, expert=8), 4096, 256),
    Row("Kimi K2", "kimi_k2:full", dict(fsdp=8, expert=64), 4096, 512),
  ],
  # Pipeline stages (mesh.stage) across the slow network: `plan.py --table pipeline`.
  # Stages must divide the scanned layers (DeepSeek-V3: 58 after the 3 dense ones;
  # Llama 3.1 405B: 126), so both take 2 on power-of-two clusters.
  "pipeline": [
    Row(
      "DeepSeek-V3 (with MTP), 2 stages",
      "deepseek_v3:full",
      dict(stage=2, fsdp=8, expert=64),
      4096,
      2048,
      {**EP_BUFFERS, "train.microbatches": 4},
    ),
    Row(
      "Llama-3.1 405B, 2 stages",
      "llama3:405b",
      dict(stage=2, fsdp=32, tensor=8),
      8192,
      128,
      {"train.microbatches": 4, "compute.loss_chunks": 8, "compute.virtual_stages": 3},
    ),
  ],
  # The same program on tiny presets: what CI runs to keep the command working.
  "tiny": [
    Row("Llama-3 tiny", "llama3:tiny", dict(fsdp=2), 256, 4),
    Row("Llama-3 tiny, context 2", "llama3:tiny", dict(data=2, context=2), 1024, 2),
    Row(
      "Llama-3 tiny, 2 stages",
      "llama3:tiny",
      dict(stage=2, fsdp=2),
      256,
      8,
      {"train.microbatches": 2},
    ),
    Row("DeepSeek-V3 tiny", "deepseek_v3:tiny", dict(fsdp=2, expert=2), 256, 4, EP_BUFFERS),
  ],
}


def load(row: Row):
  """The row's config: the preset, its mesh, seq_len and batch_size; nothing else."""
  family, preset = row.config.split(":")
  config = importlib.import_module(f"configs.{family}").get_config(preset)
  config.unlock()
  ones = {"data": 1, "fsdp": 1, "tensor": 1, "expert": 1, "context": 1, "stage": 1}
  config.mesh.update(ones | row.mesh)
  config.train.update(seq_len=row.seq_len, batch_size=row.batch_size)
  for key, value in row.overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def measure(row: Row, devices) -> dict:
  """Compiles the row's train step on `devices` (fake CPU devices, at least
  row.devices of them) -> the table's numbers."""
  from parallelism import mesh as mesh_lib  # noqa: PLC0415 - after the device count is set
  from parallelism import pipeline  # noqa: PLC0415
  from trainer import plan, precision  # noqa: PLC0415

  config = load(row)
  cfg = precision.model_config(config)
  mesh = mesh_lib.make_mesh(config.mesh, devices[: row.devices])
  sizes = dict(mesh.shape)
  mesh_lib.check_model_fits(cfg, sizes)
  mesh_lib.check_step(config, sizes)
  sched = pipeline.schedule(config, cfg, sizes["stage"])
  state = plan.memory_plan(config, cfg, sizes)["total"]
  compiled = plan.compile_step(config, cfg, mesh)
  memory = compiled["memory_per_device"]
  ways = sizes["data"] * sizes["fsdp"] * sizes["expert"]
  return {
    "row": row,
    "mesh": mesh,
    "rows_per_microbatch": row.batch_size // ways // config.train.microbatches,
    "moe": any(hasattr(b.mlp, "num_experts") for b in cfg.blocks),
    "ep_buffers": config.compute.moe_ep_capacity_factor > 0,
    "remat": config.compute.remat,
    "microbatches": config.train.microbatches,
    "loss_chunks": config.compute.loss_chunks,
    "peak": memory["peak"],
    "state": state,
    "temp": memory["temp"],
    "collectives": compiled["collectives"],
    "whole_expert_gathers": compiled["whole_expert_gathers"],
    "pipeline": sched,
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
  if m.get("moe") and not m.get("ep_buffers"):
    fixes.append("a compute.moe_ep_capacity_factor (the all-to-all buffers are sized for "
                 "every token going to one device)")  # fmt: skip
  if m.get("moe") and m["row"].mesh.get("expert", 1) < 64:
    fixes.append("more expert parallelism (fewer experts a device to gather and reduce)")
  if m.get("loss_chunks", 1) == 1:
    fixes.append("compute.loss_chunks (the head's logits a sequence chunk at a time)")
  fixes.append("more pipeline stages" if m.get("pipeline") else "pipeline stages (mesh.stage)")
  why = f"no: the step's temporaries are {human_bytes(m['temp'])} per device"
  if m["whole_expert_gathers"]:
    why += f" ({m['whole_expert_gathers']} all-gathers of whole expert weights)"
  return f"{why}; what would cut them: {', or '.join(fixes)}"


def _pipeline(sched) -> str:
  if sched is None:
    return "none"
  return (f"{sched.kind}, {sched.stages} stages x {sched.virtual}, {sched.microbatches} "
          f"micro-batches, bubble {sched.bubble:.1%}")  # fmt: skip


def markdown(measured: list[dict], title: str, notes: str = "") -> str:
  lines = [
    f"# {title}",
    "",
    "Each row: `scripts/plan.py --table` AOT-compiling one train step on fake CPU "
    "devices (XLA's memory analysis per device; budget 70 GiB of an 80 GB device). "
    "A row gives mesh, seq_len, batch_size and the overrides shown; remat, "
    "micro-batches and loss chunks are the preset's defaults.",
    "",
    "| model | mesh | seq x batch | overrides | remat | micro-batches | loss chunks "
    "| peak / device | state / device | fits? | collectives | pipeline |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for m in measured:
    row = m["row"]
    mesh = ",".join(f"{k}={v}" for k, v in row.mesh.items())
    coll = ", ".join(f"{k} x{v}" for k, v in m["collectives"].items()) or "none"
    overrides = ", ".join(f"{k}={v}" for k, v in row.overrides.items()) or "none"
    lines.append(
      f"| {row.name} | {mesh} | {row.seq_len} x {row.batch_size} | {overrides} | {m['remat']} "
      f"| {m['microbatches']} | {m['loss_chunks']} | {human_bytes(m['peak'])} "
      f"| {human_bytes(m['state'])} "
      f"| {verdict(m)} | {coll} | {_pipeline(m.get('pipeline'))} |"
    )
  return "\n".join(lines + ["", notes or NOTES]) + "\n"


NOTES = """How the MoE rows run: 64-way expert parallelism (DeepSeek-V3's own EP size) with
all-to-all buffers of twice a device's mean load (the presets' `compute.moe_ep_capacity_factor=2.0`;
pairs past it are dropped and reported as `dropped_frac`; dropless buffers must hold
every token going to one device, 64 times the mean). Each layer all-gathers only the
device's own experts over `fsdp` (no row has an all-gather of all experts), in the
compute dtype, and reduce-scatters their gradients in float32. MLA's latent axes
shard like embed (over fsdp and expert): DeepSeek-V3's state on 256 devices is
34.8 GiB (params 9.9, grads 9.9, AdamW 14.9 with the preset's bfloat16 first moments).

What the numbers are: XLA:CPU's memory analysis of the program a GPU would run,
scheduled in memory order (XLA:CPU's default concurrency order keeps more buffers
live: a 5-layer DeepSeek-V3 on fsdp=32,expert=8 needs 128.8 GiB of temporaries in
it, 81.9 in memory order). They overstate a GPU's peak: XLA:CPU computes bfloat16
gathers, scatters and elementwise ops in float32 (that 5-layer step needs 81.9 GiB
with bfloat16 compute and 94.6 with float32, where activations alone would halve),
so DeepSeek-V3's remat-saved layer inputs (58 x 4096 x 7168) count 6.3 GiB, not 3.2.
No GPU was lent to check a GPU compile.

What brought DeepSeek-V3 under budget (its 64-way row, `plan.py --compile`): 79.8
GiB with neither of these; remat of the unrolled layers too (the 3 dense prefix
layers and the MTP module had kept every activation; remat covered only the
scanned periods) 71.2; the head and its loss over 8 sequence chunks
(`compute.loss_chunks`, the preset's default; 2 GiB of float32 [4096, 129280]
logits per head otherwise; main and MTP heads in separate passes) 72.4; both
63.7; with the main and MTP heads in one pass, as now (half the head gathers and
reduce-scatters), 64.9. XLA's own partitioning of the chunked scan needed 1.6 GiB
less than the shard_map one but all-gathers the head inside every chunk and
all-reduces the whole head gradient per chunk, so the loss runs in shard_map
(one head gather, a reduce-scatter per chunk). Then expert parallelism moved its
token rows by gathers both ways instead of scatters (`grouped.move`: packing the
send buffer, the local sort and its undoing, the trip home; XLA:CPU had widened
the bfloat16 scatters' [65536, 7168] buffers to 32 bits): 64.9 -> 60.0 here; the
8-way EP row (the same 256 devices, 32 experts a device, each layer gathering 8
times more expert weights over fsdp) 71.0 -> 67.5; Qwen3-235B 62.3 -> 60.1; Kimi
K2 54.2 -> 50.6.
Qwen3-235B: its float32 state alone is 54.7 GiB on 64 devices (peak 72.6);
bfloat16 first moments (the preset's default) bring the state to 47.9, and the
gradient clip, now one multiply by a scalar that fuses into AdamW (optax's
per-element divide left a params-sized buffer of clipped gradients), took 5 GiB
off the optimizer step, where this row peaks."""


PIPELINE_NOTES = """How the pipeline rows run (`mesh.stage`, parallelism/pipeline.py): the scanned
layers split into stage x virtual_stages chunks, each stage holding its own layers'
weights; the embedding, DeepSeek-V3's 3 dense layers, the head and the MTP module run
outside the pipeline with `stage` as one more data-parallel axis. Stages must divide
the scanned periods (DeepSeek-V3: 58, Llama 3.1 405B: 126), so both rows take 2 stages
on their power-of-two clusters; 405B takes 3 virtual stages (21-layer chunks).

What sets the peak: the default schedule is 1F1B (parallelism/pipeline_1f1b.py): each
stage keeps at most 2 x virtual x stages - 1 chunk inputs, and while a chunk's
backward runs, that chunk's layer inputs (remat=full). With the forward-then-backward
loop (compute.pipeline=circular) the same rows peaked at 49.3 and 52.8 GiB: it keeps
each iteration's chunk input (M x virtual + stages - 1 iterations), and 405B with one
63-layer chunk per stage at 80.8 GiB (temporaries 72.0), hence its 3 virtual stages
(21 layers a chunk). Outside the pipeline each device holds batch / devices rows,
micro-batches / stages times a micro-batch's share: DeepSeek-V3 at 4096 x 4096 with 8
micro-batches (4 rows a device outside, its MoE MTP block's all-to-all buffers 4 times
the 256-device row's) peaked at 79.9 GiB with that loop; 2048 rows with 4
micro-batches is the row. Without the 1F1B tick's ordering of its parts (forward,
loss, hand-off, backward) XLA overlapped them and the DeepSeek-V3 row peaked at
63.4 GiB. Same measuring caveats as the
main table (XLA:CPU memory order, bfloat16 elementwise work counted in float32)."""
