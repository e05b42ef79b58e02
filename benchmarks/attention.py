"""`bench.py attention`: one MLA layer's attention in latent space, dense versus
DeepSeek Sparse Attention, at each length: XLA's compiled FLOPs and the forward's
time, the sparse core and the indexer apart; a gated DeltaNet layer of the same
width beside them."""

import time

import jax
import numpy as np


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def _chunk_flops(cfg) -> float:
  """FLOPs of one chunk of the DeltaNet state pass, the loop XLA's cost analysis
  counts once (the chunk-local terms are built outside it): the bench adds it for
  the other chunks."""
  from pallas_kernels.chunked_delta import reference  # noqa: PLC0415

  h, c, dk, dv = cfg.num_v_heads, cfg.chunk, cfg.k_head_dim, cfg.v_head_dim
  z = lambda *shape: jax.numpy.zeros((1, h, *shape), jax.numpy.float32)
  return _flops(reference.state_pass, z(1, c, dk), z(1, c, dk), z(1, c, dv), z(1, c, dk),
                z(1, c, c), z(1, dk), z(dk, dv))  # fmt: skip


def _attention_parts(topk: int):
  """An absorbed MLA layer with an indexer, sized so the cost split is visible:
  16 heads over a 128 + 32 latent, a 4 x 64 indexer."""
  from flax import nnx  # noqa: PLC0415

  from configs import deepseek_v32  # noqa: PLC0415
  from modeling.attention import mla, sparse  # noqa: PLC0415
  from modeling.config import Options, decoder_config  # noqa: PLC0415

  config = deepseek_v32.get_config("tiny")
  with config.unlocked():
    config.model.update(embed_dim=256, num_heads=16, num_kv_heads=16)
    config.model.mla.update(q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=64,
                            qk_rope_head_dim=32, v_head_dim=64)  # fmt: skip
    config.model.mla.indexer.update(num_heads=4, head_dim=64, topk=topk)
  cfg = decoder_config(config.model, Options(mla_absorbed=True)).blocks[0].attention
  layer = mla.MLA(cfg, rngs=nnx.Rngs(0))
  mla.SPARSE_CHUNK = 1 << 30  # no query loop: XLA's cost analysis counts a loop body once

  def qkv(x, positions):
    c_q, q_nope, q_pe = layer._query(x, positions)
    return (c_q, *layer._absorbed_qkv(q_nope, q_pe, *layer._latent(x, positions)))

  def dense(x, positions, segment_ids):
    _, q, k, v = qkv(x, positions)
    return layer._dense(q, k, v, segment_ids)[0]

  def indexer(x, positions, segment_ids):
    c_q = layer._query(x, positions)[0]
    scores = layer.indexer(x, c_q, positions, sparse.valid_keys(segment_ids))
    return sparse.select(scores, topk)

  def dsa(x, positions, segment_ids):
    c_q, q, k, v = qkv(x, positions)
    indices = sparse.select(layer.indexer(x, c_q, positions, sparse.valid_keys(segment_ids)), topk)
    return mla.sparse_ops.sparse_attention(
      q, k, v, indices, scale=cfg.scale, implementation="reference"
    )[0]

  # Gated DeltaNet at the same width: 16 value heads of 64 over 8 key heads of 64.
  from modeling.attention import linear  # noqa: PLC0415
  from modeling.context import Context  # noqa: PLC0415

  delta_cfg = linear.DeltaNetConfig(cfg.embed_dim, num_k_heads=8, num_v_heads=16, k_head_dim=64,
                             v_head_dim=64, chunk=64)  # fmt: skip
  delta_layer = linear.GatedDeltaNet(delta_cfg, rngs=nnx.Rngs(0))

  def deltanet(x, positions, segment_ids):
    return delta_layer(x, Context(positions, segment_ids))[0]

  parts = {"dense": dense, "dsa": dsa, "indexer": indexer, "deltanet": deltanet}
  return parts, cfg.embed_dim, _chunk_flops(delta_cfg), delta_cfg.chunk


def bench(args):
  lengths = [int(n) for n in args.lengths.split(",")]
  parts, embed, chunk_flops, chunk = _attention_parts(args.topk)
  print(f"MLA layer, absorbed (16 heads, latent 128 + rope 32), DSA top-{args.topk}, "
        f"indexer 4 x 64; batch 1; {jax.devices()[0].device_kind}")  # fmt: skip
  print("  deltanet: a gated DeltaNet layer of the same width (16 x 64 value heads), chunk 64")
  print(f"  {'tokens':>6} {'GFLOP dense':>12} {'GFLOP dsa':>10} {'(indexer)':>10} {'deltanet':>9} "
        f"{'ms dense':>9} {'ms dsa':>8} {'ms delta':>9} {'dense/dsa time':>15}")  # fmt: skip
  previous = None
  for n in lengths:
    x = jax.random.normal(jax.random.key(0), (1, n, embed))
    positions = jax.numpy.arange(n)[None]
    segment_ids = jax.numpy.ones((1, n), jax.numpy.int32)
    row = {}
    for name, fn in parts.items():
      compiled = jax.jit(fn).lower(x, positions, segment_ids).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      jax.block_until_ready(compiled(x, positions, segment_ids))
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x, positions, segment_ids))
        times.append(time.perf_counter() - start)
      flops = cost["flops"]
      if name == "deltanet":  # the chunk loop's body is in `flops` once
        flops += (-(-n // chunk) - 1) * chunk_flops
      row[name] = (flops / 1e9, 1e3 * float(np.median(times)))
    (fd, td), (fs, ts), (fi, _), (fl, tl) = (
      row[k] for k in ("dense", "dsa", "indexer", "deltanet")
    )
    print(f"  {n:6d} {fd:12.2f} {fs:10.2f} {fi:10.2f} {fl:9.2f} {td:9.1f} {ts:8.1f} {tl:9.1f} "
          f"{td / ts:14.2f}x")  # fmt: skip
    if previous:
      (pd, ps, pi, pl_), grow = previous, lambda a, b: a / b
      print(f"  {'':6s} x{grow(fd, pd):11.2f} x{grow(fs, ps):9.2f} x{grow(fi, pi):9.2f} "
            f"x{grow(fl, pl_):8.2f}   (FLOP growth from {n // 2}; dsa without its indexer "
            f"x{grow(fs - fi, ps - pi):.2f})")  # fmt: skip
    previous = (fd, fs, fi, fl)
