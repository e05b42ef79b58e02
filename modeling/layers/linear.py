"""The linear layer's matmul, with its backward written out.

`matmul(x, w, n_in)` contracts x's last `n_in` axes with w's first `n_in` axes,
as `jnp.tensordot` does. Its gradients are the usual two products; they are
written out because the form autodiff gives the weight gradient, a product over
[..., out] and [..., in] followed by a transpose to [in, out], lets XLA:CPU fold
that transpose into the fusion that makes the output gradient (the SwiGLU
backward, say) and write it strided: a tiny model's MLP backward ran 2x slower
(127 ms against 61 for x [4096, 256], gate/up/down 256 -> 512 -> 256, fwd+bwd).
Here the weight gradient is one contraction of x with the output gradient over
their shared leading axes, produced in w's own [in, out] order, and no operand
needs transposing. The numbers are those of autodiff's products.

Remat policies see a custom_vjp as one call, not as the dot inside it, so the
output carries the name `NAME`: `compute.remat=save_dots` and `offload_dots`
keep it as they keep any unbatched dot (modeling/decoder.py).
"""

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

NAME = "linear_out"


def matmul(x, w, n_in: int = 1):
  """x [..., *in] times w [*in, *out] -> [..., *out]; in is w.shape[:n_in]."""
  return checkpoint_name(_matmul(x, w, n_in), NAME)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x, w, n_in):
  return jnp.tensordot(x, w, axes=n_in)


def _fwd(x, w, n_in):
  return _matmul(x, w, n_in), (x, w)


def _bwd(n_in, residuals, g):
  x, w = residuals
  lead = x.ndim - n_in
  dx = jnp.tensordot(g, w, axes=(tuple(range(lead, g.ndim)), tuple(range(n_in, w.ndim))))
  dw = jnp.tensordot(x, g, axes=(tuple(range(lead)), tuple(range(lead))))  # [*in, *out]
  return dx, dw.astype(w.dtype)


_matmul.defvjp(_fwd, _bwd)
