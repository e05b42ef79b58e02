"""Device mesh with axes (data, fsdp, tensor, expert, context, stage) from `config.mesh`, and
multi-process start-up through JAX's own runtime (`jax.distributed`)."""

import math
import os

import jax
import numpy as np

from parallelism.rules import MESH_AXES


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry to fill the devices; validates the product."""
  sizes = [int(mesh_cfg[a]) if a in mesh_cfg else 1 for a in MESH_AXES]  # absent: 1
  fill = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(
      f"mesh sizes {dict(zip(MESH_AXES, sizes))} are invalid: each must be "
      "a positive integer, with at most one -1 to fill the rest"
    )
  known = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(
        f"mesh.{fill[0]}=-1 cannot fill {num_devices} devices: the other axes "
        f"multiply to {known}, which does not divide {num_devices}"
      )
    sizes[MESH_AXES.index(fill[0])] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
      f"{num_devices} are available; make mesh.data*fsdp*tensor*expert*context*stage match"
    )
  return tuple(sizes)


def detected_cluster(env=os.environ) -> str:
  """The multi-process launcher whose environment this is, or "": a SLURM step
  with several tasks, a Cloud TPU pod slice, or an indexed Job / JobSet on
  Kubernetes. `jax.distributed.initialize()` then finds its peers itself."""
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if env.get("TPU_WORKER_HOSTNAMES"):
    return "tpu"
  if "KUBERNETES_SERVICE_HOST" in env and "JOB_COMPLETION_INDEX" in env:
    return "kubernetes"
  return ""


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1):
  """Joins this process to a multi-process run, if there is one.

  Explicit flags win; otherwise `jax.distributed.initialize()` auto-detects
  SLURM, Cloud TPU and Kubernetes. A lone process on a workstation does nothing.
  On CPU, cross-process collectives go through gloo.
  """
  explicit = bool(coordinator) or num_processes > 0 or process_id >= 0
  if explicit and not (coordinator and num_processes > 0 and process_id >= 0):
    raise ValueError(
      "--coordinator, --num_processes and --process_id go together; give all three "
      f"(got {coordinator!r}, {num_processes}, {process_id})"
    )
  if not explicit and not detected_cluster():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()


def check_model_fits(model_cfg, sizes: dict):
  """Errors for model dimensions the mesh must split evenly: query heads over
  `tensor`, routed experts over `expert` (each device holds whole heads / experts)."""
  tensor, expert = sizes["tensor"], sizes["expert"]
  for block in model_cfg.blocks:
    # A gated DeltaNet layer splits by key head, each with its group of value heads.
    name, heads = ("num_heads", getattr(block.attention, "num_heads", 0))
    if not heads:
      name, heads = ("linear.num_k_heads", block.attention.num_k_heads)
    if heads % tensor:
      raise ValueError(
        f"model.{name}={heads} is not divisible by mesh.tensor={tensor}; "
        "pick a tensor size that divides the heads"
      )
    experts = getattr(block.mlp, "num_experts", 0)
    if experts and experts % expert:
      raise ValueError(
        f"model.moe.num_experts={experts} is not divisible by mesh.expert={expert}; "
        "pick an expert size that divides the experts"
      )


def check_batch_fits(batch_size: int, sizes: dict):
  """The batch splits over every data-like axis: data, fsdp, expert and stage."""
  ways = sizes["data"] * sizes["fsdp"] * sizes["expert"] * sizes.get("stage", 1)
  if batch_size % ways:
    raise ValueError(
      f"train.batch_size={batch_size} must be divisible by the mesh's data*fsdp*expert*stage={ways}"
    )


def check_microbatches(batch_size: int, n: int, shape: dict):
  """Micro-batches split the batch into equal parts that each split over the mesh
  (within a pipeline stage: data, fsdp, expert)."""
  ways = shape["data"] * shape["fsdp"] * shape["expert"]
  if n < 1 or batch_size % (n * ways):
    raise ValueError(
      f"train.microbatches={n} must be a positive divisor of train.batch_size={batch_size} "
      f"that leaves each micro-batch divisible by the mesh's data*fsdp*expert={ways}; "
      f"use one of {[d for d in range(1, batch_size + 1) if batch_size % (d * ways) == 0]}"
    )


def check_context(seq_len: int, sizes: dict):
  """Context parallelism gives each device a chunk from the front of the sequence
  and one from the back: the length splits into 2 x context equal chunks."""
  if sizes["context"] > 1 and seq_len % (2 * sizes["context"]):
    raise ValueError(
      f"train.seq_len={seq_len} must be divisible by 2 x mesh.context = {2 * sizes['context']}"
    )


def check_loss_chunks(seq_len: int, chunks: int, sizes: dict):
  """The loss's sequence chunks are strided (positions j, j + chunks, ...): each
  chunk has seq_len / chunks positions, which split over the context axis."""
  c = sizes["context"]
  if chunks < 1 or seq_len % (chunks * c):
    ok = [n for n in range(1, seq_len // c + 1) if seq_len % (n * c) == 0][:12]
    raise ValueError(
      f"compute.loss_chunks={chunks} must be a positive divisor of train.seq_len={seq_len} "
      f"that leaves each chunk divisible by mesh.context={c}; use one of {ok}"
    )


def check_step(config, sizes: dict):
  """The step's batch and sequence against the mesh: batch, micro-batches, context
  chunks and loss chunks, each one error naming the field."""
  t = config.train
  check_batch_fits(t.batch_size, sizes)
  check_microbatches(t.batch_size, t.microbatches, sizes)
  check_context(t.seq_len, sizes)
  check_loss_chunks(t.seq_len, config.compute.loss_chunks, sizes)


def mesh_sizes(mesh_cfg, num_devices: int) -> dict[str, int]:
  """{axis: size} with the -1 axis resolved (see `mesh_shape`)."""
  return dict(zip(MESH_AXES, mesh_shape(mesh_cfg, num_devices), strict=True))


def dcn_shape(mesh_cfg, shape: tuple[int, ...]) -> tuple[int, ...]:
  """Per-axis counts of slices / nodes (mesh.dcn_data, mesh.dcn_fsdp; 1 elsewhere)."""
  dcn = {"data": int(mesh_cfg.get("dcn_data", 1)), "fsdp": int(mesh_cfg.get("dcn_fsdp", 1))}
  for axis, n in dcn.items():
    size = shape[MESH_AXES.index(axis)]
    if n < 1 or size % n:
      raise ValueError(
        f"mesh.dcn_{axis}={n} must be a positive divisor of mesh.{axis}={size} (the slices "
        f"or nodes that axis spans)"
      )
  return tuple(dcn.get(axis, 1) for axis in MESH_AXES)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  """The mesh, devices in the hardware's order: `jax.make_mesh` within a slice,
  and `create_hybrid_device_mesh` across slices (TPU `slice_index`) or nodes
  (process index) when mesh.dcn_data or mesh.dcn_fsdp > 1."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  dcn = dcn_shape(mesh_cfg, shape)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if math.prod(dcn) == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)

  return jax.sharding.Mesh(hybrid_devices(shape, dcn, devices), MESH_AXES, axis_types=auto)


def hybrid_devices(shape: tuple, dcn: tuple, devices) -> np.ndarray:
  """Devices [shape] for a mesh spanning prod(dcn) slices (TPU `slice_index`) or
  processes: each slice holds a contiguous block of the dcn axes."""
  from jax.experimental import mesh_utils  # noqa: PLC0415

  by_slice = hasattr(devices[0], "slice_index")
  granules = {d.slice_index if by_slice else d.process_index for d in devices}
  if len(granules) != math.prod(dcn):
    raise ValueError(
      f"mesh.dcn_data x mesh.dcn_fsdp = {math.prod(dcn)} but the devices come from "
      f"{len(granules)} {'slices' if by_slice else 'processes'}; make them match"
    )
  ici = tuple(s // d for s, d in zip(shape, dcn))
  return mesh_utils.create_hybrid_device_mesh(
    ici, dcn, devices, process_is_granule=not by_slice, allow_split_physical_axes=True
  )
