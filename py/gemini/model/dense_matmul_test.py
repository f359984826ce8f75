"""dense.matmul (f32-accumulating float matmul with its own VJP) against jnp.tensordot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.model import dense


def _ref(x, w, n_in, w_in_last):
  xf, wf = x.astype(jnp.float32), w.astype(jnp.float32)
  if w_in_last:
    wf = jnp.moveaxis(wf, tuple(range(w.ndim - n_in, w.ndim)), tuple(range(n_in)))
  return jnp.tensordot(xf, wf, axes=n_in, precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("n_in,w_shape,w_in_last", [(1, (5, 7), False), (2, (4, 5, 6), False),
                                                    (1, (7, 5), True)])
def test_values_and_gradients_equal_tensordot(dtype, tol, n_in, w_shape, w_in_last):
  kx, kw, kp = jax.random.split(jax.random.PRNGKey(0), 3)
  w_in = w_shape[len(w_shape) - n_in:] if w_in_last else w_shape[:n_in]
  x = jax.random.normal(kx, (2, 3) + w_in, jnp.float32).astype(dtype)
  w = jax.random.normal(kw, w_shape, jnp.float32)                     # f32 master weight
  out = dense.matmul(x, w, n_in, out_dtype=jnp.float32, w_in_last=w_in_last)
  ref = _ref(x, w.astype(dtype), n_in, w_in_last)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=tol, atol=tol)
  probe = jax.random.normal(kp, ref.shape)

  def loss(f):
    return lambda a, b: jnp.sum(jnp.sin(f(a, b)) * probe)

  gx, gw = jax.grad(loss(lambda a, b: dense.matmul(a, b, n_in, out_dtype=jnp.float32,
                                                   w_in_last=w_in_last)), (0, 1))(x, w)
  rx, rw = jax.grad(loss(lambda a, b: _ref(a, b, n_in, w_in_last)), (0, 1))(
      x.astype(jnp.float32), w)
  assert gx.dtype == dtype and gw.dtype == jnp.float32
  for g, r in ((gx, rx), (gw, rw)):
    scale = float(np.abs(np.asarray(r)).max())
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r), atol=2 * tol * scale)


def test_dense_keeps_x_dtype():
  x = jnp.ones((2, 4), jnp.bfloat16)
  assert dense.dense(x, jnp.ones((4, 3))).dtype == jnp.bfloat16
