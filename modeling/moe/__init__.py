"""Mixture of experts: routers, stacked experts with dropless/capacity dispatch, the MoE layer."""

from modeling.moe.experts import Experts
from modeling.moe.layer import MoE
from modeling.moe.router import Router, RouterBias, aux_free_update, validate

__all__ = ["Experts", "MoE", "Router", "RouterBias", "aux_free_update", "validate"]
