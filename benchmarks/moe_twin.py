"""The dense twin of an MoE config: the baseline the MoE step is measured against."""

from trainer.precision import model_config


def dense_twin(config):
  """`config` with every MoE layer a dense MLP of the same active width (top_k
  experts + the shared ones): the dense step of equal active parameters."""
  blocks, moe = model_config(config).blocks, config.model.moe
  active = moe.top_k * moe.expert_mlp_dim + (
    moe.shared_mlp_dim or moe.num_shared_experts * moe.expert_mlp_dim
  )
  dims = [active if hasattr(b.mlp, "num_experts") else b.mlp.mlp_dim for b in blocks]
  twin = copy_config(config)
  twin.model.update(ffn_pattern=("dense",), first_dense_layers=0, mlp_dims=tuple(dims))
  return twin


def copy_config(config):
  """An unlocked deep copy of a loaded config."""
  copy = config.copy_and_resolve_references()
  copy.unlock()
  return copy
