"""The forms the train step takes for speed: the linear matmul's written-out backward, the layer
layout (`compute.scan_layers`), statistics computed only when something reads
them, and the CPU compile options (`compute.cpu_ynnpack`). Speed itself is
measured by the benchmarks, never here."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeling.layers import linear
from parallelism.mesh import make_mesh
from tests.conftest import ROOT, small_train_config
from trainer import precision, step
from trainer.trainer import Trainer


@pytest.mark.parametrize("n_in", [1, 2])
def test_the_linear_matmul_has_autodiffs_gradients(n_in):
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(k[0], (3, 5, 4, 2))  # [b, s, *in] with in (4, 2) or (2,)
  w = jax.random.normal(k[1], x.shape[4 - n_in :] + (6, 3))  # [*in, *out]
  dy = jax.random.normal(k[2], x.shape[: 4 - n_in] + (6, 3))

  def loss(fn, x, w):
    return jnp.sum(jnp.tanh(fn(x, w)) * dy)

  got = jax.value_and_grad(lambda *a: loss(lambda x, w: linear.matmul(x, w, n_in), *a), (0, 1))
  want = jax.value_and_grad(lambda *a: loss(lambda x, w: jnp.tensordot(x, w, n_in), *a), (0, 1))
  for g, r in zip(jax.tree.leaves(got(x, w)), jax.tree.leaves(want(x, w))):
    assert g.shape == r.shape
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "layers,platform,scan",
  [(4, "cpu", False), (16, "cpu", False), (17, "cpu", True), (4, "gpu", False), (8, "tpu", True)],
)
def test_auto_unrolls_shallow_models_and_scans_deep_ones(layers, platform, scan):
  config = small_train_config("llama3")
  config.model.num_layers = layers
  got, why = precision.scan_layers(config, platform)
  assert got is scan
  assert f"{layers} layers on {platform}" in why


def test_a_bad_scan_layers_value_names_the_field():
  config = small_train_config("llama3")
  config.compute.scan_layers = "False"
  with pytest.raises(
    ValueError, match=r"compute.scan_layers='False' is not valid; use one of auto"
  ):
    precision.scan_layers(config)


def _config(steps: int):
  config = small_train_config("llama3", steps=steps, log_every=1)
  config.optim.warmup_steps = 1
  return config


def test_resume_keeps_the_layout_its_checkpoint_was_written_in(tmp_path, capsys):
  config = _config(2)
  config.compute.scan_layers = "scan"
  Trainer(config, str(tmp_path)).run()
  config = _config(3)  # auto: unrolled on CPU
  trainer = Trainer(config, str(tmp_path))
  assert "layers: scanned (as the checkpoint was written)" in capsys.readouterr().out
  assert "stack" in trainer.state["params"]
  trainer.run()
  config = _config(4)
  config.compute.scan_layers = "unroll"
  with pytest.raises(ValueError, match="written with compute.scan_layers=scan .* resume with"):
    Trainer(config, str(tmp_path))


def _reduce_maxes(config) -> int:
  """reduce_max ops left in the compiled train step (XLA removes unread ones)."""
  program = step.build(config, make_mesh(config.mesh))
  text = program.lower().compile().as_text()
  return len(re.findall(r'= f32\[[0-9,]*\]\{?[0-9,]*\}? reduce\(.*op_name="[^"]*reduce_max', text))


def test_max_logits_are_computed_only_when_something_reads_them():
  config = small_train_config("llama3")
  quiet = _reduce_maxes(config)
  config.logging.max_logit = True
  assert _reduce_maxes(config) > quiet
  program = step.build(config, make_mesh(config.mesh))
  state = program.init_state(seed=0)
  batch = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), program.abstract_batch())
  _, metrics = program.train_step(state, batch)
  assert "max_logit" in metrics
  config.logging.max_logit = False
  program = step.build(config, make_mesh(config.mesh))
  _, metrics = program.train_step(program.init_state(seed=0), batch)
  assert "max_logit" not in metrics


def test_cpu_steps_compile_without_ynnpack_unless_asked_and_compute_the_same():
  config = small_train_config("llama3")
  losses = {}
  for ynnpack in (False, True):
    config.compute.cpu_ynnpack = ynnpack
    program = step.build(config, make_mesh(config.mesh))
    assert ("ynn_fusion" in program.lower().compile().as_text()) is ynnpack
    batch = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), program.abstract_batch())
    _, metrics = program.train_step(program.init_state(seed=0), batch)
    losses[ynnpack] = float(metrics["loss"])
  np.testing.assert_allclose(losses[False], losses[True], rtol=1e-5)
  assert precision.compiler_options(config, "gpu") is None


def _bench(*args) -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, str(ROOT / "scripts" / "bench.py"), *args],
    capture_output=True, text=True, env=env, timeout=600, check=False,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def test_flops_bench_prints_compiled_over_analytic():
  out = _bench("flops", "--families", "llama3", "--steps", "1")
  row = next(line.split() for line in out.splitlines() if line.strip().startswith("llama3"))
  ratio = float(row[3])
  assert 0.7 < ratio < 1.15  # the XLA path skips most of the masked attention


def test_mfu_bench_runs_the_dense_and_moe_models_on_cpu_shapes():
  out = _bench("mfu", "--steps", "1")
  rows = [line for line in out.splitlines() if "MFU" in line]
  assert [r.split()[0] for r in rows] == ["dense", "moe"]
  assert "configs/deepseek_v3.py:tiny" in rows[1] and "layers unrolled" in rows[1]


def test_decode_bench_runs_ours_hf_and_the_matmul_floors():
  out = _bench("decode", "--batch", "2", "--prompt", "4", "--new_tokens", "4", "--repeats", "1")
  assert "same tokens: True" in out
  rows = [line.split()[0] for line in out.splitlines()[1:]]
  assert rows == ["ours", "HF", "torch", "XLA", "ours"]


def test_data_bench_times_every_source_kind_with_both_tokenizers():
  out = _bench("data", "--mb", "0.3", "--vocab", "400", "--batches", "3", "--train_steps", "0")
  kinds = ("text", "jsonl", "parquet", "arrow", "arrayrecord")
  rows = [line.split() for line in out.splitlines() if line.split()[:1] in ([k] for k in kinds)]
  assert sorted((r[0], r[1]) for r in rows) == sorted(
    (k, t) for k in kinds for t in ("byte", "bpe")
  )
  assert all(float(r[2]) > 0 for r in rows)
