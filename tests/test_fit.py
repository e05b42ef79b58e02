"""The fit table (benchmarks/fit.py, `scripts/plan.py --table`): every real row is
a valid run of its preset on its mesh (checked without compiling), a compiled row
reports the step's own memory, and a row over budget says why."""

import jax
import pytest

from benchmarks import fit
from parallelism import mesh as mesh_lib
from parallelism import pipeline
from trainer import plan, precision


@pytest.mark.parametrize("row", fit.ROWS["full"] + fit.ROWS["pipeline"], ids=lambda r: r.name)
def test_every_full_row_is_a_valid_run_on_its_mesh(row):
  config = fit.load(row)
  cfg = precision.model_config(config)
  sizes = mesh_lib.mesh_sizes(config.mesh, row.devices)
  mesh_lib.check_model_fits(cfg, sizes)
  mesh_lib.check_step(config, sizes)
  sched = pipeline.schedule(config, cfg, sizes["stage"])
  assert (sched is not None) == (row in fit.ROWS["pipeline"])
  assert config.train.seq_len == row.seq_len and config.train.batch_size == row.batch_size


def test_a_compiled_row_reports_the_steps_memory_and_a_verdict():
  row = fit.Row("one device", "llama3:tiny", dict(fsdp=1), 128, 2)
  measured = fit.measure(row, jax.devices())
  config = fit.load(row)
  want = plan.compile_step(config, precision.model_config(config), measured["mesh"])
  assert measured["peak"] == want["memory_per_device"]["peak"]
  text = fit.markdown([measured], "t")
  assert "| one device | fsdp=1 | 128 x 2 | none | none | 1 |" in text and "| fits |" in text


def test_a_row_over_budget_says_why():
  base = dict(temp=0, whole_expert_gathers=0, remat="none", rows_per_microbatch=4, moe=False)
  state_bound = fit.verdict(base | dict(peak=90 * 2**30, state=80 * 2**30))
  assert state_bound.startswith("no: params + grads + optimizer state alone need 80.0 GiB")
  temp_bound = fit.verdict(base | dict(peak=90 * 2**30, state=10 * 2**30, temp=80 * 2**30))
  assert temp_bound.startswith("no: the step's temporaries are 80.0 GiB")
  assert "remat=full, or more train.microbatches" in temp_bound
  assert "compute.loss_chunks" in temp_bound
  row = fit.Row("MoE", "deepseek_v3:full", dict(fsdp=32, expert=8), 4096, 256)
  moe = fit.verdict(base | dict(peak=71 * 2**30, state=1, temp=40 * 2**30, moe=True,
                                ep_buffers=True, loss_chunks=8, remat="full", row=row))  # fmt: skip
  assert moe.endswith("more expert parallelism (fewer experts a device to gather and "
                      "reduce), or pipeline stages (mesh.stage)")  # fmt: skip
  assert fit.verdict(base | dict(peak=70 * 2**30, state=1)) == "fits"


def test_a_row_sets_its_overrides_and_shows_them():
  row = fit.ROWS["tiny"][-1]  # DeepSeek-V3 tiny with the MoE rows' EP buffers
  assert (
    fit.load(row).compute.moe_ep_capacity_factor
    == 2.0
    == fit.EP_BUFFERS["compute.moe_ep_capacity_factor"]
  )
  m = dict(row=row, remat="none", microbatches=1, loss_chunks=1, peak=1, state=1, temp=0,
           collectives={}, whole_expert_gathers=0)  # fmt: skip
  assert "| 256 x 4 | compute.moe_ep_capacity_factor=2.0 | none |" in fit.markdown([m], "t")
