"""Three kinds of settings, three sections: `model` holds only what changes the
function the network computes, `objective` what the loss rewards, `compute` how
the step runs. Old keys fail naming their new home; a checkpoint written before
the split resumes; export and resume compare `model` alone."""

import json
import pathlib
import shutil

import pytest

from configs import base, moved
from modeling.hf import export
from tests.conftest import family_config, small_train_config
from trainer import checkpoint
from trainer.trainer import Trainer, check_same_model

DATA = pathlib.Path(__file__).parent / "data"


def _get(config, dotted: str):
  node = config
  for name in dotted.split("."):
    if name not in node:
      return None
    node = node[name]
  return node


def test_every_moved_key_left_model_and_has_one_new_home():
  config = base.get_config()
  for old, new in moved.MOVED.items():
    assert _get(config, old) is None, old
    assert _get(config, new) is not None, new
  assert len(set(moved.MOVED.values())) == len(moved.MOVED)


def test_moved_key_in_a_preset_names_its_new_home():
  presets = {"x": {"model": {"remat": "full"}}}
  with pytest.raises(ValueError, match="config key model.remat has moved to compute.remat"):
    base.from_presets("llama3", presets, "x")


def test_tests_configs_stay_locked_so_a_moved_key_cannot_be_added_silently():
  config = family_config("deepseek_v3")
  with pytest.raises(AttributeError):
    config.model.z_loss = 1e-4


def test_migrate_moves_old_keys_and_keeps_their_values():
  old = base.get_config().to_dict()
  old["model"]["z_loss"] = 1e-4
  old["model"]["moe"]["dispatch"] = "capacity"
  old["model"]["mla"]["indexer"]["stage"] = "warmup"
  old["train"]["matformer_dims"] = [64, 64]
  del old["objective"], old["compute"]
  new = moved.migrate(old)
  assert new["objective"]["z_loss"] == 1e-4
  assert new["compute"]["moe_dispatch"] == "capacity"
  assert new["objective"]["indexer_stage"] == "warmup"
  assert new["objective"]["matformer_dims"] == [64, 64]
  assert "z_loss" not in new["model"] and "dispatch" not in new["model"]["moe"]
  assert old["model"]["z_loss"] == 1e-4  # the input is left as it was
  restored = checkpoint.config_from_saved(old)
  assert restored.compute.moe_dispatch == "capacity"
  assert restored.objective.matformer_dims == (64, 64)


def test_resume_compares_model_alone():
  saved = json.loads(small_train_config("llama3").to_json_best_effort())
  now = json.loads(small_train_config("llama3").to_json_best_effort())
  now["objective"]["z_loss"], now["compute"]["remat"] = 1e-3, "full"
  check_same_model(saved, now)  # other sections may change between runs
  now["model"]["mlp_dim"] = 96
  with pytest.raises(ValueError, match="model.mlp_dim: 128 in the checkpoint, 96 now"):
    check_same_model(saved, now)


def test_export_needs_no_denylist_for_training_settings():
  """An MoE + MTP model exports whatever its objective and compute sections hold:
  they are not in `model`, so the config.json reads back to the same blocks."""
  config = family_config("deepseek_v3")
  config.objective.update(z_loss=1e-3, moe_seq_aux_weight=0.1, moe_bias_update_rate=0.5)
  config.compute.update(remat="full", moe_dispatch="capacity", mla_absorbed=True)
  hf = export.hf_config(config.model)
  assert hf["model_type"] == "deepseek_v3"
  assert hf["num_nextn_predict_layers"] == config.model.mtp.depth == 1  # MTP layers exported


def test_a_checkpoint_from_before_the_split_resumes(tmp_path):
  """tests/data/pre_split_run: 2 steps of a tiny DeepSeek-V3 written by the code
  before the split, with model.z_loss and model.remat set. The same run in the new
  layout resumes it at step 2 and trains on."""
  workdir = tmp_path / "run"
  shutil.copytree(DATA / "pre_split_run", workdir)
  config = family_config("deepseek_v3")
  config.model.update(num_layers=2, embed_dim=32, mlp_dim=64, num_heads=2, num_kv_heads=2)
  config.model.update(vocab_size=260)
  config.model.mla.update(
    q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8
  )
  config.model.moe.update(num_experts=4, top_k=2, expert_mlp_dim=16, n_group=2, topk_group=1)
  config.objective.z_loss = 1e-4
  config.compute.remat = "full"
  config.train.update(steps=3, batch_size=2, seq_len=32, log_every=1, eval_batches=1)
  config.optim.warmup_steps = 1
  config.logging.update(progress_bar=False, tensorboard=False)
  trainer = Trainer(config, str(workdir))
  assert int(trainer.state["step"]) == 2
  result = trainer.run()
  assert result["train"]["step"] == 3


def test_restoring_a_different_param_layout_is_one_sentence():
  saved = ["params/per_layer_embed", "params/embed", "opt/0/mu/per_layer_embed"]
  wanted = ["params/stream/per_layer_embed", "params/embed", "opt/0/mu/stream/per_layer_embed"]
  with pytest.raises(ValueError) as error:
    checkpoint.check_layout(saved, wanted, step=7, directory="/w/checkpoints")
  message = str(error.value)
  assert "\n" not in message and "predates" in message
  assert "'params/per_layer_embed'" in message and "'params/stream/per_layer_embed'" in message
  checkpoint.check_layout(wanted, wanted, step=7, directory="/w/checkpoints")  # same: fine
