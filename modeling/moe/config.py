"""The MoE layer's config (router, routed experts, shared expert) and its checks."""

import dataclasses

from modeling.layers import mlp
from modeling.layers.fp8 import Fp8


@dataclasses.dataclass(frozen=True)
class MoeConfig:
  """Routed experts (+ optional shared experts) replacing a dense MLP."""

  embed_dim: int
  num_experts: int
  top_k: int
  expert_mlp_dim: int
  router: str = "softmax"  # softmax | sigmoid | softmax_topk (softmax over the top-k logits)
  router_softcap: float = 0.0  # > 0: logits = cap*tanh(logits/cap) before scoring.
  norm_topk: bool = True  # renormalise the selected weights to sum to 1.
  n_group: int = 1  # group-limited routing: experts in n_group groups,
  topk_group: int = 1  #   tokens only pick from the topk_group best groups.
  routed_scaling: float = 1.0  # multiplies the routed weights.
  router_bias: bool = False  # learned bias on the router logits.
  aux_free_bias: bool = False  # DeepSeek-V3 selection-only bias (state, not a param).
  num_shared_experts: int = 0
  shared_mlp_dim: int = 0  # width of the (fused) shared expert MLP.
  shared_gate: bool = False  # sigmoid gate on the shared expert output.
  output_scale: float = 1.0  # y = output_scale * (routed + shared).
  activation: str = "silu"  # silu | gelu_tanh | clamped_swiglu (routed and shared experts)
  swiglu_limit: float = 7.0  # clamped_swiglu's clamp.
  expert_bias: bool = False  # biases on the expert projections.
  scale_inputs: bool = False  # the routing weight scales the expert input, not output.
  dispatch: str = "dropless"  # dropless (sort + grouped matmul) | capacity (drop over capacity)
  matmul: str = "blocks"  # dropless grouped matmuls: ragged_dot | blocks (layers/grouped.py)
  capacity_factor: float = 1.25
  ep_capacity_factor: float = 0.0  # expert parallel: 0 = exact dropless buffers.
  init_std: float = 0.02
  fp8: Fp8 | None = None  # FP8-style expert and shared-expert matmuls (never the router).


ROUTERS = ("softmax", "sigmoid", "softmax_topk")
SHARED_ACTIVATIONS = tuple(mlp.ACTIVATIONS)  # the shared expert is a plain GatedMLP
ACTIVATIONS = SHARED_ACTIVATIONS + ("clamped_swiglu",)  # routed experts: also gpt-oss's clamp
DISPATCHES = ("dropless", "capacity")
MATMULS = ("ragged_dot", "blocks")  # compute.moe_matmul once `auto` is resolved


def _check(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def validate(cfg: MoeConfig):
  """Raises ValueError naming the first bad MoeConfig field."""
  E = cfg.num_experts
  for name in ("embed_dim", "num_experts", "top_k", "expert_mlp_dim", "n_group", "topk_group"):
    _check(getattr(cfg, name) > 0, f"model.moe.{name}={getattr(cfg, name)} must be positive")
  for name, valid in (("router", ROUTERS), ("activation", ACTIVATIONS)):
    value = getattr(cfg, name)
    _check(
      value in valid, f"model.moe.{name}={value!r} is not valid; use one of {', '.join(valid)}"
    )
  for name, value, valid in (
    ("compute.moe_dispatch", cfg.dispatch, DISPATCHES),
    ("compute.moe_matmul", cfg.matmul, MATMULS),
  ):
    _check(value in valid, f"{name}={value!r} is not valid; use one of {', '.join(valid)}")
  _check(cfg.top_k <= E, f"model.moe.top_k={cfg.top_k} exceeds model.moe.num_experts={E}")
  _check(
    E % cfg.n_group == 0, f"model.moe.n_group={cfg.n_group} must divide model.moe.num_experts={E}"
  )
  _check(
    cfg.topk_group <= cfg.n_group,
    f"model.moe.topk_group={cfg.topk_group} exceeds model.moe.n_group={cfg.n_group}",
  )
  reachable = cfg.topk_group * (E // cfg.n_group)
  _check(
    cfg.top_k <= reachable,
    f"model.moe.top_k={cfg.top_k} exceeds the {reachable} experts in model.moe.topk_group={cfg.topk_group} "
    f"groups of {E // cfg.n_group}; raise topk_group or lower top_k",
  )
  _check(
    cfg.dispatch != "capacity" or cfg.capacity_factor > 0,
    f"compute.moe_capacity_factor={cfg.capacity_factor} must be positive",
  )
  _check(
    cfg.ep_capacity_factor >= 0,
    f"compute.moe_ep_capacity_factor={cfg.ep_capacity_factor} must be >= 0 (0 = exact dropless)",
  )
  _check(
    (cfg.num_shared_experts > 0) == (cfg.shared_mlp_dim > 0),
    f"model.moe.shared_mlp_dim={cfg.shared_mlp_dim} must be > 0 exactly when "
    f"model.moe.num_shared_experts={cfg.num_shared_experts} > 0",
  )
  _check(
    cfg.shared_mlp_dim == 0 or cfg.activation in SHARED_ACTIVATIONS,
    f"model.moe.activation={cfg.activation!r} has no shared-expert form; with "
    f"model.moe.shared_mlp_dim > 0 use one of {', '.join(SHARED_ACTIVATIONS)}",
  )
  _check(
    cfg.router_softcap >= 0,
    f"model.moe.router_softcap={cfg.router_softcap} must be >= 0 (0 = off)",
  )
  _check(
    cfg.output_scale > 0, f"model.moe.output_scale={cfg.output_scale} must be positive (1.0 = off)"
  )
  _check(
    not cfg.shared_gate or cfg.shared_mlp_dim > 0,
    "model.moe.shared_gate=True needs a shared expert (model.moe.shared_mlp_dim > 0)",
  )
