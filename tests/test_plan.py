"""scripts/plan.py: params, per-device bytes, KV cache and FLOPs from shapes alone,
for the full DeepSeek-V3 and Kimi K2 without allocating them; --compile reports
XLA's memory analysis and collectives on fake devices."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from trainer.plan import count_collectives

PEAK_RSS_LIMIT = 3 * 2**30  # a full model would need terabytes


def _plan(*args, devices: int = 0) -> tuple[dict, int]:
  """(plan.py --json output, the child's peak RSS in bytes)."""
  # VmHWM is this process image's own peak: ru_maxrss would also count the pytest
  # worker the child was forked from (Linux carries it across fork and exec).
  code = (
    "import re, runpy, sys\n"
    "sys.argv = ['scripts/plan.py'] + sys.argv[1:]\n"
    "try:\n"
    "  runpy.run_path('scripts/plan.py', run_name='__main__')\n"
    "finally:\n"
    "  hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
    "  print('RSS', int(hwm) * 1024, file=sys.stderr)\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code, *args, "--json"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  rss = int(next(line for line in result.stderr.splitlines() if line.startswith("RSS")).split()[1])
  return json.loads(result.stdout.strip().splitlines()[-1]), rss


@pytest.mark.parametrize(
  "preset,mesh,total,active,vocab,moments",
  [  # moments: optimizer bytes per param byte (V3's preset keeps AdamW's first in bf16)
    ("configs/deepseek_v3.py:full", "fsdp=64,expert=8", 671e9, 37e9, 129_280, 1.5),
    ("configs/kimi_k2.py:full", "data=2,fsdp=64,expert=8", 1.04e12, 32.6e9, 163_840, 2),
  ],
)
def test_full_presets_plan_without_allocating(preset, mesh, total, active, vocab, moments):
  plan, rss = _plan("--config", preset, "--mesh", mesh)
  assert rss < PEAK_RSS_LIMIT
  assert abs(plan["params_total"] / total - 1) < 0.02
  assert abs(plan["params_active"] / active - 1) < 0.02
  # MLA caches the 512-wide latent + the 64-wide RoPE key, in bf16.
  assert plan["kv_bytes_per_token_per_layer"] == (512 + 64) * 2
  assert plan["kv_bytes_per_token"] == 61 * (512 + 64) * 2
  # 6 FLOPs per active matmul param (the embedding is a lookup) plus attention.
  assert plan["train_flops_per_token"] > 6 * (plan["params_active"] - vocab * 7168)
  per_device = plan["bytes_per_device"]
  # fp32 params over fsdp*expert = 512 devices (data replicates): near-perfect ZeRO-3.
  ideal = (plan["params_total"] + plan["params_mtp"]) * 4 / 512
  assert ideal <= per_device["params"] < 1.1 * ideal
  assert per_device["grads"] == per_device["params"]
  want = moments * per_device["params"]
  assert want <= per_device["optimizer"] < want + 4096
  assert per_device["total"] == 2 * per_device["params"] + per_device["optimizer"]


def test_single_device_holds_every_param():
  plan, _ = _plan("--config", "configs/llama3.py:tiny", "--mesh", "fsdp=1")
  assert plan["bytes_per_device"]["params"] == plan["params_total"] * 4
  assert plan["kv_bytes_per_token_per_layer"] == 2 * 2 * 32 * 4  # 2 kv heads x 32 dims, fp32
  assert plan["kv_bytes_per_token"] == 4 * plan["kv_bytes_per_token_per_layer"]


def test_compile_reports_memory_and_collectives():
  plan, _ = _plan(
    "--config",
    "configs/qwen3_moe.py:tiny",
    "--mesh",
    "data=1,fsdp=2,tensor=2,expert=2",
    "--compile",
    "--config.model.num_layers=2",
  )
  compiled = plan["compiled"]
  memory, analytic = compiled["memory_per_device"], plan["bytes_per_device"]
  # The step's arguments are the sharded state (params, optimizer, step, MoE
  # state) and the batch shard: the analytic params + optimizer bytes plus a little.
  state = analytic["params"] + analytic["optimizer"]
  assert state <= memory["argument"] < 1.05 * state + 2**20
  assert memory["temp"] > 0 and memory["peak"] >= memory["argument"]
  # fsdp gathers weights, gradients are reduced over the batch axes.
  assert compiled["collectives"].get("all-reduce", 0) > 0
  assert compiled["collectives"].get("all-gather", 0) > 0


def test_count_collectives_counts_async_pairs_once():
  hlo = """
  %a = f32[8]{0} all-reduce(f32[8]{0} %x), replica_groups={}
  %b = (f32[8]{0}, f32[16]{0}) all-gather-start(f32[8]{0} %y), dimensions={0}
  %c = f32[16]{0} all-gather-done((f32[8]{0}, f32[16]{0}) %b)
  %d = f32[8]{0} add(f32[8]{0} %a, f32[8]{0} %a)
  """
  assert count_collectives(hlo) == {"all-reduce": 1, "all-gather": 1}


@pytest.mark.parametrize(
  "overrides,kv_bytes",
  [
    # 128-head MHA, head_dim 128, bf16: K and V of every head.
    (["--config.model.num_heads=128", "--config.model.num_kv_heads=128"], 65_536),
    # GQA with 8 kv heads of 128 (Llama 3 70B as released).
    ([], 4_096),
  ],
  ids=["mha128", "gqa8"],
)
def test_kv_cache_bytes_per_token_per_layer(overrides, kv_bytes):
  args = ["--config", "configs/llama3.py:70b", "--mesh", "fsdp=8", "--config.model.head_dim=128"]
  plan, _ = _plan(*args, *overrides)
  assert plan["kv_bytes_per_token_per_layer"] == kv_bytes
  assert plan["kv_bytes_per_token"] == 80 * kv_bytes


def _plan_error(*args) -> str:
  result = subprocess.run(
    [sys.executable, "scripts/plan.py", "--config", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0
  return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
  "args,message",
  [
    (
      ["configs/llama3.py:tiny", "--mesh", "fsdp=-1"],
      "error: --mesh has a -1 axis; give --devices",
    ),
    (
      ["configs/llama3.py:tiny", "--mesh", "fsdp=2", "--devices=8"],
      "needs 2 devices but 8 are available",
    ),
    (
      ["configs/deepseek_v3.py:tiny", "--mesh", "fsdp=1,expert=3"],
      "model.moe.num_experts=16 is not divisible by mesh.expert=3",
    ),
    (
      ["configs/llama3.py:tiny", "--mesh", "fsdp=1,tensor=3"],
      "model.num_heads=8 is not divisible by mesh.tensor=3",
    ),
    (
      ["configs/llama3.py:tiny", "--mesh", "fsdp=2", "--config.mesh.rules=embedding=fsdp"],
      "mesh.rules entry 'embedding=fsdp' must be LOGICAL=AXIS",
    ),
    (
      ["configs/llama3.py:tiny", "--mesh", "fsdp=2", "--config.mesh.rules=embed=zero"],
      "mesh.rules entry 'embed=zero' names ['zero']",
    ),
    (
      ["configs/llama3.py:tiny", "--mesh", "fsdp=8", "--compile", "--config.train.batch_size=4"],
      "train.batch_size=4 must be divisible by the mesh's data*fsdp*expert*stage=8",
    ),
  ],
  ids=["fill", "device_count", "experts", "heads", "rule_name", "rule_axis", "batch"],
)
def test_bad_mesh_is_one_error_line(args, message):
  assert message in _plan_error(*args)


def test_rule_overrides_change_the_per_device_bytes():
  base = ["--config", "configs/llama3.py:tiny", "--mesh", "fsdp=8"]
  sharded, _ = _plan(*base)
  # embed replicated: only vocab/mlp/heads axes could shard, and tensor is 1.
  replicated, _ = _plan(*base, "--config.mesh.rules=embed=")
  assert replicated["bytes_per_device"]["params"] == replicated["params_total"] * 4
  assert sharded["bytes_per_device"]["params"] < replicated["bytes_per_device"]["params"] / 4
  # vocab over fsdp as well: the embedding table is then split over fsdp on its vocab axis.
  vocab, _ = _plan(*base, "--config.mesh.rules=embed=,vocab=fsdp")
  assert vocab["bytes_per_device"]["params"] < replicated["bytes_per_device"]["params"]
