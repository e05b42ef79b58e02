"""Grouped matmuls for routed experts: rows sorted by expert, each group of rows
times its own expert's weights (what `jax.lax.ragged_dot` computes).

Two ways to run them (`compute.moe_matmul`):
`ragged_dot`: XLA's grouped op. TPUs run it as a grouped GEMM; XLA:CPU and the
  CUDA backend of jaxlib 0.10 rewrite it into a dense matmul of every row against
  every expert, masked: E times the work (measured: 13.3 GFLOP compiled for
  0.8 GFLOP of useful matmul at 16 experts).
`blocks`: each expert's rows are padded to whole blocks of `block_rows` rows,
  every block is multiplied by its own expert's weights, and one batched einsum
  runs all blocks. Work: at most m + E * block rows instead of E * m.
`auto` takes `ragged_dot` on TPU and `blocks` elsewhere.

`layout` says where the sorted rows sit, so an expert FFN pads its rows once,
runs its projections in that layout and unpads once. Padding and unpadding are
gathers whose gradients are gathers too (each is the other's inverse on real
rows), never scatters. Letters: m rows, E experts, n blocks, b rows per block.
"""

import dataclasses

import jax
import jax.numpy as jnp

METHODS = ("auto", "ragged_dot", "blocks")
MIN_BLOCK, MAX_BLOCK = 8, 128
# `blocks` multiplies by a per-block copy of the weights up to this size, then loops
# over the blocks: DeepSeek-V3's 2,080 blocks of a device's 32 experts would copy
# 2080 x 7168 x 2048 weights (57 GiB in bf16) per projection.
GATHER_LIMIT = 256 * 2**20


def resolve(method: str, platform: str) -> str:
  """`compute.moe_matmul` for this platform: auto is ragged_dot on TPU, else blocks."""
  if method != "auto":
    return method
  return "ragged_dot" if platform == "tpu" else "blocks"


def block_rows(m: int, num_experts: int) -> int:
  """Rows per block: a power of two in [8, 128], small enough that padding (at most
  E - 1 blocks' worth) stays under an eighth of the m rows where m allows."""
  b = MIN_BLOCK
  while b * 2 <= MAX_BLOCK and num_experts * b * 2 <= m // 8:
    b *= 2
  return b


@jax.custom_vjp
def move(x, index, inverse):
  """x[index] with out-of-range rows zero; its gradient is g[inverse], where
  `inverse` undoes `index` on every row `index` reads."""
  return jnp.take(x, index, axis=0, mode="fill", fill_value=0)


def _move_fwd(x, index, inverse):
  return move(x, index, inverse), inverse


def _move_bwd(inverse, g):
  return jnp.take(g, inverse, axis=0, mode="fill", fill_value=0), None, None


move.defvjp(_move_fwd, _move_bwd)


@dataclasses.dataclass(frozen=True)
class Ragged:
  """`ragged_dot`'s layout: the sorted rows as they are."""

  sizes: jax.Array  # [E] rows per expert
  row_expert: jax.Array | None = None  # [m] each row's expert (for biases)

  def pad(self, x):
    return x

  def unpad(self, y):
    return y

  def matmul(self, x, w, preferred_element_type=None, dtype=None):
    w = w if dtype is None else w.astype(dtype)
    return jax.lax.ragged_dot(x, w, self.sizes, preferred_element_type=preferred_element_type)

  def bias(self, b):
    return b[self.row_expert]


@dataclasses.dataclass(frozen=True)
class Blocks:
  """`blocks`' layout: each expert's sorted rows padded to whole blocks."""

  block_expert: jax.Array  # [n] each block's expert
  src: jax.Array  # [n * b] the sorted row of each padded row (m = none)
  dest: jax.Array  # [m] the padded row of each sorted row (n * b = none)

  @classmethod
  def build(cls, sizes, m: int) -> "Blocks":
    E = sizes.shape[0]
    b = block_rows(m, E)
    n = m // b + E  # sum_g ceil(sizes[g] / b) <= m / b + E - E / b
    ends = jnp.cumsum(sizes)
    starts = ends - sizes
    padded = (sizes + b - 1) // b * b
    pends = jnp.cumsum(padded)
    pstarts = pends - padded
    block_expert = jnp.minimum(jnp.searchsorted(pends, jnp.arange(n) * b, side="right"), E - 1)
    p = jnp.arange(n * b)
    g = block_expert[p // b]
    offset = p - pstarts[g]
    src = jnp.where(offset < sizes[g], starts[g] + offset, m)
    r = jnp.arange(m)
    gr = jnp.searchsorted(ends, r, side="right")  # E: past the last group's rows
    grc = jnp.minimum(gr, E - 1)
    dest = jnp.where(gr < E, pstarts[grc] + r - starts[grc], n * b)
    return cls(block_expert.astype(jnp.int32), src, dest)

  def pad(self, x):
    """[m, K] sorted rows -> [n, b, K] blocks."""
    n = self.block_expert.shape[0]
    return move(x, self.src, self.dest).reshape(n, -1, x.shape[-1])

  def unpad(self, y):
    """[n, b, N] blocks -> [m, N] sorted rows (unused rows zero)."""
    return move(y.reshape(-1, y.shape[-1]), self.dest, self.src)

  def matmul(self, x, w, preferred_element_type=None, dtype=None):
    """Blocks [n, b, K] times their experts' w [E, K, N] (cast to `dtype`): one
    batched matmul over a [n, K, N] copy of the weights, or, where that copy would
    pass GATHER_LIMIT, a scan over the blocks that reads each expert's weights in
    place (the backward recomputes the read and sums w's gradient in w's dtype)."""
    cast = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))
    n, (_, K, N) = self.block_expert.shape[0], w.shape
    if n * K * N * jnp.dtype(dtype or w.dtype).itemsize <= GATHER_LIMIT:
      return jnp.einsum(
        "nbk,nkf->nbf", x, cast(w)[self.block_expert], preferred_element_type=preferred_element_type
      )

    @jax.checkpoint
    def block(_, xs):
      rows, g = xs
      return None, jnp.dot(rows, cast(w[g]), preferred_element_type=preferred_element_type)

    return jax.lax.scan(block, None, (x, self.block_expert))[1]

  def bias(self, b):
    """b [E, N] -> each block's expert's bias, [n, 1, N]."""
    return b[self.block_expert][:, None, :]


def layout(method: str, sizes, m: int, row_expert=None) -> Ragged | Blocks:
  """Where m rows sorted by expert (`sizes[g]` rows for expert g, then unused
  rows) sit for `method`'s grouped matmul; row_expert [m] is each row's expert
  (ragged_dot's biases need it)."""
  if method == "ragged_dot":
    return Ragged(sizes, row_expert)
  return Blocks.build(sizes, m)


def ragged_dot(x, w, sizes, method: str, preferred_element_type=None):
  """jax.lax.ragged_dot(x [m, K], w [E, K, N], sizes [E]) computed by `method`."""
  lay = layout(method, sizes, x.shape[0])
  return lay.unpad(lay.matmul(lay.pad(x), w, preferred_element_type))
