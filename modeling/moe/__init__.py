"""Mixture of experts: routers, stacked experts with dropless/capacity dispatch, the MoE layer."""

from modeling.moe.experts import Experts
from modeling.moe.layer import MoE
from modeling.moe.router import ExpertLoad, Router, RouterBias, aux_free_update, validate

__all__ = ["ExpertLoad", "Experts", "MoE", "Router", "RouterBias", "aux_free_update", "validate"]
