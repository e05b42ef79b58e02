"""The same train steps on 1 device and on 8 (fake CPU) devices give the same
losses and the same params, for a dense and an MoE (MLA + MTP + aux-free bias)
tiny model, over the meshes (data, fsdp, tensor, expert) of the spec (the MoE model
on those with an expert axis), and for DeepSeek Sparse Attention and the
linear-attention layers on one mixed mesh."""

import numpy as np
import pytest

from tests.conftest import MESHES, SINGLE, run_on_mesh

# Llama 3 over every mesh; the MoE model over the meshes with an expert axis (pure
# data and pure fsdp shard it like the dense model, and cost CI minutes).
CASES = [("llama3", m) for m in MESHES] + [("deepseek_v3", m) for m in MESHES if m["expert"] > 1]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """family -> its 1-device run, made once per module (per xdist worker)."""
  runs = {}

  def get(family):
    if family not in runs:
      runs[family] = run_on_mesh(tmp_path_factory.mktemp(family), family, SINGLE, devices=1)
    return runs[family]

  return get


@pytest.mark.parametrize(
  "family, mesh", CASES, ids=lambda c: c if isinstance(c, str) else "x".join(map(str, c.values()))
)
def test_sharded_steps_match_single_device(tmp_path, single, family, mesh):
  losses, params = single(family)
  sharded_losses, sharded_params = run_on_mesh(tmp_path, family, mesh, devices=8)
  assert len(losses) == 3
  np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
  assert sharded_params.keys() == params.keys()
  for name, value in params.items():
    np.testing.assert_allclose(sharded_params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("family", ["deepseek_v32", "qwen3_next"])
def test_attention_variants_sharded_steps_match_single_device(tmp_path, family):
  """On the mixed 8-device mesh, equal to one device: DeepSeek Sparse Attention
  (indexer top-k inside each MLA layer, sharded top_k), and gated DeltaNet layers
  (3 layers, key heads and their value-head groups over `tensor`). KDA runs the same
  chunked core with plain `heads` axes, so it is left out to keep CI short."""
  losses, params = run_on_mesh(tmp_path, family, SINGLE, devices=1)
  sharded_losses, sharded_params = run_on_mesh(tmp_path, family, MESHES[2], devices=8)
  np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
  # Sums in another order: Adam normalises a few near-zero gradients (decay gates,
  # rare embedding rows, dt_bias ~1, the DeltaNet beta/alpha projection) and moves
  # those params up to ~2e-5 apart (CI saw 1.7e-5 on in_proj_ba), against steps of
  # lr = 3e-3; a wrong reduction would be off by a whole step.
  for name, value in params.items():
    np.testing.assert_allclose(sharded_params[name], value, rtol=5e-5, atol=5e-5, err_msg=name)
