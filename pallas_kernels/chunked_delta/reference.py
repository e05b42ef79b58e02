"""The truth: the chunked delta rule's state pass in plain jnp.

The chunked form of the gated delta rule (modeling/attention/linear.py) splits
into chunk-local terms, built for every chunk at once, and this pass, the only
part that runs in order. Per (batch, head) and chunk n, with the state S [k, v]
entering the chunk:

  v_new = u_n - w_n S            the chunk's values less what S already predicts
  o_n   = qd_n S + P_n v_new     reads of the old state, plus attention in the chunk
  S     = a_n * S + kd_n^T v_new  a_n [k] decays S's rows (0 at a document start)

Layouts: qd, w, kd [b, h, n, c, k]; u [b, h, n, c, v]; P [b, h, n, c, c];
a [b, h, n, k]; state [b, h, k, v]. Returns (o [b, h, n, c, v], final state),
float32.
"""

import jax
import jax.numpy as jnp


def state_pass(qd, w, u, kd, P, a, state, *, unroll: bool = False):
  """unroll: unroll the loop over chunks (XLA's cost analysis counts a loop body once)."""
  f32 = jnp.float32
  mm = lambda x, y: jnp.einsum("bhck,bhkv->bhcv", x, y, preferred_element_type=f32)

  def step(S, xs):
    qd, w, u, kd, P, a = xs
    v_new = u - mm(w, S)
    o = mm(qd, S) + mm(P, v_new)
    S = a[..., None] * S + jnp.einsum("bhck,bhcv->bhkv", kd, v_new, preferred_element_type=f32)
    return S, o

  xs = tuple(jnp.moveaxis(x.astype(f32), 2, 0) for x in (qd, w, u, kd, P, a))
  n = a.shape[2]
  state, o = jax.lax.scan(step, state.astype(f32), xs, unroll=n if unroll else 1)
  return jnp.moveaxis(o, 0, 2), state
