"""One builder for the train state and step (trainer/step.py): `plan.py --compile`
compiles exactly the program `train.py` runs (the same HLO, the same memory),
QK-clip and MTP and MoE included; the post-update hooks find their layers by
module path."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from modeling.decoder import Decoder
from tests.conftest import small_train_config
from trainer import hooks, plan, precision
from trainer.trainer import Trainer


def test_plan_compiles_the_program_the_trainer_runs(tmp_path):
  config = small_train_config("deepseek_v3", steps=4)  # MoE with the aux-free bias, MTP
  config.optim.update(name="muon", qk_clip_tau=30.0, qk_clip_measure="updated")  # MuonClip
  config.objective.moe_bias_update_rate = 0.01
  config.optim.warmup_steps = 1
  trainer = Trainer(config, str(tmp_path))
  batch = trainer.put(next(trainer.data_iter))
  lowered = trainer.program.lower(trainer.state, batch)
  planned = plan.compile_step(config, trainer.model_cfg, trainer.mesh)
  assert planned["hlo_fingerprint"] == plan.hlo_fingerprint(lowered.as_text())
  memory = lowered.compile().memory_analysis()
  for name, value in planned["memory_per_device"].items():
    if name != "peak":
      assert value == getattr(memory, f"{name}_size_in_bytes"), name


def test_hooks_find_layers_by_module_path():
  """The router-bias hook updates exactly the layers whose stats it is given, by
  their paths: a scanned stack with its [periods, E] loads, nothing else."""
  config = small_train_config("deepseek_v3")
  config.model.num_layers = 3  # a dense layer, then two scanned MoE layers
  config.compute.scan_layers = "scan"
  cfg = precision.model_config(config)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  assert isinstance(hooks.module_at(model, "stack/blocks/0/mlp").router.aux_free_bias, nnx.Variable)
  graphdef, params, state = nnx.split(model, nnx.Param, ...)
  params, state = nnx.to_pure_dict(params), nnx.to_pure_dict(state)
  E = cfg.blocks[1].mlp.num_experts
  load = jnp.stack([jnp.arange(E, dtype=jnp.float32), jnp.ones(E)])  # [periods, E]
  new = hooks.update_router_biases(
    graphdef, params, state, {"stack/blocks/0/mlp": {"load": load}}, 0.5
  )
  bias = np.asarray(new["stack"]["blocks"][0]["mlp"]["router"]["aux_free_bias"])
  want = 0.5 * np.sign(np.asarray(load).mean(-1, keepdims=True) - np.asarray(load))
  np.testing.assert_array_equal(bias, want)  # period 1's loads are even: no move
  mtp = new["mtp"][0]["block"]["mlp"]["router"]["aux_free_bias"]
  np.testing.assert_array_equal(np.asarray(mtp), 0.0)  # reported nothing: untouched
