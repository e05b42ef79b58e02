"""Hugging Face checkpoint import: `load(directory) -> (config, model)`."""

from modeling.hf.config_json import model_config_from_hf
from modeling.hf.loader import load, load_params

__all__ = ["load", "load_params", "model_config_from_hf"]
