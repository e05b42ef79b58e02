"""Keys that left `model` (and `train`) when the config was split into model /
objective / compute: an override of an old key fails naming the new one, and a
config saved in the old layout (a checkpoint's JSON) is read through `migrate`."""

import copy

# old dotted key -> its new home
MOVED = {
  "model.z_loss": "objective.z_loss",
  "model.moe.seq_aux_weight": "objective.moe_seq_aux_weight",
  "model.moe.switch_aux_weight": "objective.moe_switch_aux_weight",
  "model.moe.router_z_weight": "objective.moe_router_z_weight",
  "model.moe.bias_update_rate": "objective.moe_bias_update_rate",
  "model.mtp.loss_weight": "objective.mtp_weight",
  "model.mtp.late_loss_weight": "objective.mtp_late_weight",
  "model.mtp.late_start": "objective.mtp_late_start",
  "model.mla.indexer.stage": "objective.indexer_stage",
  "model.mla.indexer.loss_weight": "objective.indexer_kl_weight",
  "train.matformer_dims": "objective.matformer_dims",
  "train.matformer_weight": "objective.matformer_weight",
  "model.attention_kernel": "compute.attention_kernel",
  "model.scan_layers": "compute.scan_layers",
  "model.remat": "compute.remat",
  "model.mla.absorbed": "compute.mla_absorbed",
  "model.moe.dispatch": "compute.moe_dispatch",
  "model.moe.capacity_factor": "compute.moe_capacity_factor",
  "model.moe.ep_capacity_factor": "compute.moe_ep_capacity_factor",
  "model.per_layer_input.host_memory": "compute.ple_host_memory",
  "model.init_std": "train.init_std",
}


def message(key: str, value=None) -> str | None:
  """One sentence for an old key ("model.z_loss"), or None if it never moved."""
  if key not in MOVED:
    return None
  hint = f"--config.{MOVED[key]}={value}" if value is not None else f"config.{MOVED[key]}"
  return f"config key {key} has moved to {MOVED[key]}; set {hint} instead"


def migrate(saved: dict) -> dict:
  """A config dict (a checkpoint's JSON) in the layout of this version: keys of the
  old layout moved to their new homes (values kept)."""
  saved = copy.deepcopy(saved)
  for old, new in MOVED.items():
    *parents, leaf = old.split(".")
    node = saved
    for name in parents:
      node = node.get(name) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
      continue
    value = node.pop(leaf)
    section, key = new.split(".")
    saved.setdefault(section, {}).setdefault(key, value)
  compute = saved.get("compute", {})
  if isinstance(compute.get("scan_layers"), bool):  # a bool before "auto" | "scan" | "unroll"
    compute["scan_layers"] = "scan" if compute["scan_layers"] else "unroll"
  return saved
