"""Mixture of experts: routers, stacked experts with dropless/capacity dispatch, the MoE layer."""

from modeling.moe.config import MoeConfig, validate
from modeling.moe.experts import Experts
from modeling.moe.layer import MoE
from modeling.moe.router import Router, RouterBias, aux_free_update

__all__ = ["Experts", "MoE", "MoeConfig", "Router", "RouterBias", "aux_free_update", "validate"]
