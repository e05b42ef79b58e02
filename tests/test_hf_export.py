"""Specs for modeling/hf/export.py: our models written back as HF checkpoints.

Every HF parity case (all weights randomised, every imported model_type) is
loaded, exported and (1) imported again to bit-identical params, (2) loaded by
`transformers`, whose logits match ours. Configs HF cannot express are errors.
"""

import importlib
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open

from modeling import hf
from modeling.hf import export
from tests import hf_common, hf_moe_cases, test_hf_parity
from tests.conftest import ROOT, small_train_config
from tests.hf_common import SEQ, TOL

CASES = {**test_hf_parity.CASES, **hf_moe_cases.CASES}
PRESETS = {
  path.stem: importlib.import_module(f"configs.{path.stem}")
  for path in sorted((ROOT / "configs").glob("*.py"))
  if path.stem not in ("__init__", "base", "moved")
}


def _params(model) -> dict:
  flat = nnx.to_flat_state(nnx.state(model))
  return {p: np.asarray(v.get_value()) for p, v in flat if p[0] != "mtp"}


def _transformers_logits(directory, tokens) -> np.ndarray:
  model = transformers.AutoModelForCausalLM.from_pretrained(
    directory, dtype=torch.float32, attn_implementation="eager"
  ).eval()
  with torch.no_grad():
    return model(input_ids=torch.as_tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("name", list(CASES))
def test_export_imports_back_identically_and_transformers_matches_ours(name, tmp_path):
  hf_common.build(CASES[name], tmp_path / "source")
  config, model = hf.load(tmp_path / "source")
  written = export.save(model, config.model, tmp_path / "export")
  assert json.loads((tmp_path / "export" / "config.json").read_text()) == written
  _, back = hf.load(tmp_path / "export")
  ours, theirs = _params(model), _params(back)
  assert ours.keys() == theirs.keys()
  for path in ours:
    np.testing.assert_array_equal(theirs[path], ours[path], err_msg=str(path))
  tokens = hf_common.tokens(2, SEQ)
  diff = np.abs(
    _transformers_logits(tmp_path / "export", tokens) - hf_common.ours(model, tokens)[0]
  )
  print(f"{name}: max |logits diff| = {diff.max():.2e}")
  assert diff.max() <= TOL


# Families transformers has no model class for (Grok 2.5: sglang's Grok1ForCausalLM only).
NO_HF_MODEL = ("grok2",)


# Presets their family's HF code cannot express -> what the export error names. The
# MiniMax-01 release rotates half of each head; transformers' MiniMax the whole head.
NO_HF_EXPORT = {("minimax01", "full"): "partial_rotary_factor=0.5 is not supported for minimax"}


@pytest.mark.parametrize("family", [f for f in PRESETS if f not in NO_HF_MODEL])
def test_every_preset_has_a_config_json_that_reads_back(family):
  module = PRESETS[family]
  for preset in module.PRESETS:
    model_cfg = module.get_config(preset).model
    if (family, preset) in NO_HF_EXPORT:
      with pytest.raises(ValueError, match=NO_HF_EXPORT[family, preset]):
        export.hf_config(model_cfg)
      continue
    written = export.hf_config(model_cfg)
    assert written["model_type"] == export.MODEL_TYPES[family]
    back = hf.model_config_from_hf(written).model
    for key in ("num_layers", "embed_dim", "num_heads", "vocab_size", "attention_pattern"):
      assert back[key] == model_cfg[key], (family, preset, key)


@pytest.mark.parametrize("family", NO_HF_MODEL)
def test_a_family_without_an_hf_model_refuses_export_naming_the_family(family):
  with pytest.raises(ValueError, match=f"model.family='{family}' has no Hugging Face export"):
    export.hf_config(PRESETS[family].get_config("tiny").model)


@pytest.mark.parametrize(
  "family,field,value,named",
  [
    ("llama3", "attention_pattern", ("local", "global"), "model.attention_pattern"),
    ("mistral", "attention_pattern", ("local", "global"), "model.attention_pattern"),
    ("qwen3", "qk_norm", "full", "model.qk_norm"),
    ("deepseek_v3", "moe.router", "softmax", "model.moe.router"),
  ],
)
def test_what_hf_cannot_express_is_an_error_naming_the_field(family, field, value, named):
  m = PRESETS[family].get_config("tiny").model
  m.sliding_window = 16
  node, leaf = (m.moe, field.split(".")[1]) if "." in field else (m, field)
  node[leaf] = value
  with pytest.raises(ValueError, match=f"cannot be exported as .*{named}"):
    export.hf_config(m)


def test_large_models_are_sharded_with_an_index(tmp_path):
  hf_common.build(CASES["llama"], tmp_path / "source")
  config, model = hf.load(tmp_path / "source")
  export.save(model, config.model, tmp_path / "export", shard_bytes=100_000)
  index = json.loads((tmp_path / "export" / "model.safetensors.index.json").read_text())
  files = sorted(set(index["weight_map"].values()))
  assert len(files) > 2 and all((tmp_path / "export" / f).exists() for f in files)
  _, back = hf.load(tmp_path / "export")
  for path, value in _params(model).items():
    np.testing.assert_array_equal(_params(back)[path], value)


def test_bfloat16_export_holds_the_rounded_params_and_never_overwrites(tmp_path):
  hf_common.build(CASES["qwen3"], tmp_path / "source")
  config, model = hf.load(tmp_path / "source")
  export.save(model, config.model, tmp_path / "export", dtype="bfloat16")
  assert not (tmp_path / "export.partial").exists()
  with safe_open(tmp_path / "export" / "model.safetensors", framework="np") as f:
    assert {f.get_slice(n).get_dtype() for n in f.keys()} == {"BF16"}
  _, back = hf.load(tmp_path / "export")
  for path, value in _params(model).items():
    rounded = np.asarray(value.astype(jnp.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(_params(back)[path], rounded)
  with pytest.raises(ValueError, match="is not empty; export into a new directory"):
    export.save(model, config.model, tmp_path / "export")


def test_export_script_writes_a_trained_run_transformers_loads(tmp_path):
  """From the workdir alone (its training data deleted first); files world-readable."""
  import shutil  # noqa: PLC0415

  (tmp_path / "data").mkdir()
  for i in range(8):
    (tmp_path / "data" / f"{i}.txt").write_text(f"some training text {i} " * 40)
  config = small_train_config("qwen3", steps=4, log_every=2)
  config.optim.warmup_steps = 1
  config.data.update(path=str(tmp_path / "data" / "*.txt"), eval_fraction=0.0)
  from trainer.trainer import Trainer  # noqa: PLC0415

  trainer = Trainer(config, str(tmp_path / "run"))
  trainer.run()
  model = nnx.merge(trainer.graphdef, trainer.state["params"], trainer.state["model_state"])
  shutil.rmtree(tmp_path / "data")  # the data has moved: export needs none of it
  out = tmp_path / "hf"
  cmd = [sys.executable, "scripts/convert_hf.py", f"--workdir={tmp_path / 'run'}", f"--out={out}"]
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "exported step 4" in result.stdout
  umask = os.umask(0)
  os.umask(umask)
  assert {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()} == {
    "config.json": 0o666 & ~umask,
    "model.safetensors": 0o666 & ~umask,
  }
  tokens = hf_common.tokens(2, SEQ)
  diff = np.abs(_transformers_logits(out, tokens) - hf_common.ours(model, tokens)[0]).max()
  assert diff <= TOL


def test_export_script_without_a_checkpoint_fails_cleanly(tmp_path):
  cmd = [sys.executable, "scripts/convert_hf.py", f"--workdir={tmp_path}", f"--out={tmp_path}/o"]
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: no checkpoint in")


@pytest.mark.parametrize("family", ["deepseek_v3", "deepseek_v32", "glm4_moe"])
def test_mtp_modules_export_and_load_as_deepseeks_extra_layers(family, tmp_path):
  """The MTP module is layer num_layers of the checkpoint (DeepSeek's layout:
  enorm, hnorm, eh_proj, shared_head.norm, its block, and copies of the embedding
  and head), config.json's num_nextn_predict_layers says how many; it loads back
  to the same weights and the same MTP logits."""
  from modeling.decoder import Decoder  # noqa: PLC0415
  from tests.conftest import family_config  # noqa: PLC0415
  from trainer import precision  # noqa: PLC0415

  config = family_config(family)
  config.model.mtp.depth = 1  # (the deepseek presets' own; GLM-4.5 has one too)
  model = Decoder(precision.model_config(config), rngs=nnx.Rngs(0))
  export.save(model, config.model, tmp_path / "hf")
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_nextn_predict_layers"] == 1
  layer = f"model.layers.{config.model.num_layers}."
  names = set(safe_open(tmp_path / "hf" / "model.safetensors", "np").keys())
  for name in ("enorm", "hnorm", "eh_proj", "shared_head.norm", "shared_head.head",
               "embed_tokens", "input_layernorm", "self_attn.o_proj"):  # fmt: skip
    assert f"{layer}{name}.weight" in names
  back_config, back = hf.load(tmp_path / "hf")
  assert back_config.model.mtp.depth == 1
  mtp = lambda m: {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))
                   if p[0] == "mtp"}  # noqa: E731  # fmt: skip
  ours, theirs = mtp(model), mtp(back)
  assert ours and ours.keys() == theirs.keys()
  for path in ours:
    np.testing.assert_array_equal(ours[path], theirs[path])
  tokens = jnp.asarray(hf_common.tokens(2, SEQ))
  (_, want), (_, got) = model(tokens), back(tokens)
  for a, b in zip(want["mtp_logits"], got["mtp_logits"], strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
