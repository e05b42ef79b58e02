"""Bad input: one line on stderr naming the field, before any compile."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

CASES = [  # (extra args, text the one error line must contain)
  (["--config", "configs/llama3.py:huge"], "valid presets: tiny, 1b, 8b, 70b"),
  (["--config", "configs/llama3.py:tiny", "--config.train.stepz=3"], "train.stepz"),
  (["--config", "configs/llama3.py:tiny", "--config.model.num_kv_heads=3"], "model.num_kv_heads"),
  (["--config", "configs/llama3.py:tiny", "--config.data.path=/no/such/dir/*.txt"], "data.path"),
  (
    ["--config", "configs/deepseek_v3.py:tiny", "--config.model.moe.top_k=17"],
    "model.moe.top_k=17 exceeds model.moe.num_experts=16",
  ),
  (
    ["--config", "configs/deepseek_v3.py:tiny", "--config.model.moe.n_group=5"],
    "model.moe.n_group=5 must divide",
  ),
  (
    ["--config", "configs/deepseek_v3.py:tiny", "--config.model.moe.topk_group=5"],
    "model.moe.topk_group=5 exceeds model.moe.n_group=4",
  ),
  (
    ["--config", "configs/qwen3.py:tiny", "--config.model.norm_placement=middle"],
    "model.norm_placement",
  ),
  (
    ["--config", "configs/llama4.py:tiny", "--config.model.attention_chunk=0"],
    "model.attention_chunk must be > 0",
  ),
  (
    ["--config", "configs/llama3.py:tiny", "--config.mesh.fsdp=2"],
    "needs 2 devices but 1 are available",
  ),
  (
    [
      "--config",
      "configs/llama3.py:tiny",
      "--config.precision.fp8=True",
      "--config.precision.fp8_grads=e4m4",
    ],
    "precision.fp8_grads='e4m4' is not valid; use one of e4m3, e5m2",
  ),  # fmt: skip
  (
    ["--config", "configs/kimi_linear.py:tiny", "--config.model.linear.num_v_heads=8"],
    "model.linear.kind='kda' needs num_k_heads == num_v_heads",
  ),
  (
    ["--config", "configs/gemma3n.py:tiny", "--config.model.kv_shared_layers=7"],
    "layer 1 (global) has no earlier global layer to take K/V from",
  ),
  (
    ["--config", "configs/deepseek_v3.py:tiny", "--config.model.z_loss=1e-4"],
    "config key model.z_loss has moved to objective.z_loss; set --config.objective.z_loss=1e-4",
  ),
  (
    ["--config", "configs/gpt_oss.py:tiny", "--config.compute.attention_kernel=cudnn"],
    "compute.attention_kernel='cudnn' cannot run this model's",
  ),
  (
    ["--config", "configs/llama3.py:tiny", "--config.compute.attention_kernel=pallas"],
    "Pallas kernels compile for GPU or TPU (on CPU use pallas_interpret); use 'auto'",
  ),
  (["--config", "configs/llama3.py:tiny", "--config.optim.lr=inf"], "optim.lr=inf must be"),
]


@pytest.mark.parametrize(
  "args,needle",
  CASES,
  ids=[
    "preset",
    "key",
    "kv_heads",
    "data",
    "top_k",
    "n_group",
    "topk_group",
    "choice",
    "chunk",
    "mesh",
    "fp8",
    "kda_heads",
    "kv_shared",
    "moved_key",
    "kernel",
    "pallas_on_cpu",
    "lr_inf",
  ],
)
def test_bad_input_fails_with_one_line_naming_the_field(args, needle, tmp_path):
  result = subprocess.run(
    [sys.executable, "scripts/train.py", *args, "--workdir", str(tmp_path / "run")],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert needle in lines[0]
  assert not (tmp_path / "run").exists()  # failed before creating anything
