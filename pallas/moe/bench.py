"""MoE layer benchmark: ragged (dropless) path vs capacity path vs dense one-hot baseline.

  bazel run //pallas/moe:bench [-- --quick]

1. Step time (forward+backward of one MoE layer, jit, compile excluded, median of a few
   runs) on 8 fake CPU devices with experts over `expert`, for a few layer sizes:
     ragged   = expert-parallel dropless moe_ffn (Pallas remote-DMA exchange + gmm),
     capacity = expert-parallel capacity moe_ffn (lax.all_to_all + gmm),
     dense    = the one-hot einsum baseline (every expert on every token), same mesh (GSPMD).
   Ratios are against dense measured in the same run. On this CPU the Pallas kernels run in
   the interpreter, so these ratios say nothing about TPU speed (only real hardware can).
2. Bytes moved between devices per token (from the layer's own metrics) for each path.
3. Per-device memory of the same layer compiled by the real TPU compiler for v5e (2x2) at a
   realistic size: ragged vs capacity vs dense (memory_analysis()).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Other processes on this machine may hold libtpu (AOT compiles); share it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=wrong-import-position

from pallas.testing import tpu_topology  # pylint: disable=wrong-import-position
from pallas.moe import ops  # pylint: disable=wrong-import-position


def _problem(t, d, f, e, k, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(t, d)), dtype)
  ids = jnp.asarray(np.argsort(rng.random((t, e)), axis=1)[:, :k], jnp.int32)
  gates = jnp.asarray(rng.uniform(0.1, 1.0, (t, k)), jnp.float32)
  w = [jnp.asarray(rng.normal(size=s) / np.sqrt(s[1]), dtype)
       for s in ((e, d, f), (e, d, f), (e, f, d))]
  return x, ids, gates, w


def dense_baseline(x, ids, gates, wg, wu, wd):
  """The dense one-hot baseline as a model would write it: every expert on every token in
  x.dtype (default precision), then a one-hot combine. y [T, D]."""
  e = wg.shape[0]
  combine = jnp.einsum("tk,tke->te", gates, jax.nn.one_hot(ids, e, dtype=gates.dtype))
  h = jax.nn.gelu(jnp.einsum("td,edf->tef", x, wg), approximate=True) * \
      jnp.einsum("td,edf->tef", x, wu)
  out = jnp.einsum("tef,efd->ted", h, wd)
  return jnp.einsum("te,ted->td", combine.astype(x.dtype), out)


def _step_fn(path, mesh, ids, interpret=None):
  """jit(value_and_grad) of one MoE layer for `path`; returns (fn, metrics_fn)."""

  def layer(x, gates, wg, wu, wd):
    if path == "dense":
      return dense_baseline(x, ids, gates, wg, wu, wd), None
    y, m = ops.moe_ffn(x, ids, gates, wg, wu, wd, mesh=mesh,
                       mode="dropless" if path == "ragged" else "capacity",
                       capacity_factor=1.25, interpret=interpret)
    return y, m

  def loss(x, gates, wg, wu, wd):
    y, m = layer(x, gates, wg, wu, wd)
    return jnp.sum(y.astype(jnp.float32) ** 2), m

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))


def _time(fn, args, reps):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def step_times(sizes, reps):
  mesh = jax.make_mesh((8,), ("expert",), axis_types=(jax.sharding.AxisType.Auto,))
  print("\n== 1. step time, one MoE layer fwd+bwd, 8 fake CPU devices (experts over 'expert'),"
        " f32; Pallas kernels INTERPRETED here (not a TPU speed claim)")
  print(f"{'T':>6} {'D':>5} {'F':>5} {'E':>3} {'k':>2} {'dense ms':>10} {'ragged ms':>10} "
        f"{'capacity ms':>12} {'ragged/dense':>12} {'capacity/dense':>14}")
  bytes_rows = []
  for t, d, f, e, k in sizes:
    x, ids, gates, w = _problem(t, d, f, e, k, jnp.float32)
    sh = NamedSharding(mesh, P("expert"))
    x, gates = jax.device_put(x, sh), jax.device_put(gates, sh)
    w = [jax.device_put(v, sh) for v in w]
    args = (x, gates, *w)
    res = {}
    for path in ("dense", "ragged", "capacity"):
      sec, out = _time(_step_fn(path, mesh, ids), args, reps)
      res[path] = sec
      m = out[0][1]
      if m is not None:
        bytes_rows.append((t, d, e, k, path, int(m["bytes_moved"]) / t,
                           int(m["tokens_dropped"])))
    print(f"{t:>6} {d:>5} {f:>5} {e:>3} {k:>2} {res['dense'] * 1e3:>10.1f} "
          f"{res['ragged'] * 1e3:>10.1f} {res['capacity'] * 1e3:>12.1f} "
          f"{res['ragged'] / res['dense']:>12.2f} {res['capacity'] / res['dense']:>14.2f}")
  print("\n== 2. bytes moved between devices per token (both directions, from metrics); "
        "dense moves none (GSPMD gathers the weights instead)")
  print(f"{'T':>6} {'D':>5} {'E':>3} {'k':>2} {'path':>9} {'bytes/token':>12} {'dropped':>8}")
  for t, d, e, k, path, bpt, dropped in bytes_rows:
    print(f"{t:>6} {d:>5} {e:>3} {k:>2} {path:>9} {bpt:>12.1f} {dropped:>8}")


def tpu_memory(t, d, f, e, k, topology="v5e:2x2"):
  devices = tpu_topology.tpu_topology(topology)
  n = len(devices)
  mesh = tpu_topology.tpu_mesh(topology, (n,), ("expert",))
  print(f"\n== 3. per-device memory, one MoE layer fwd+bwd compiled for {topology} ({n} chips),"
        f" T={t} D={d} F={f} E={e} k={k} bf16")
  print(f"{'path':>9} {'temp MiB':>10} {'args MiB':>10} {'out MiB':>10} {'compile s':>10}")
  sd = lambda s, dt: jax.ShapeDtypeStruct(s, dt, sharding=NamedSharding(mesh, P("expert")))
  ids = sd((t, k), jnp.int32)
  for path in ("dense", "ragged", "capacity"):
    def loss(x, ids, gates, wg, wu, wd, path=path):
      if path == "dense":
        y = dense_baseline(x, ids, gates, wg, wu, wd)
      else:
        y, _ = ops.moe_ffn(x, ids, gates, wg, wu, wd, mesh=mesh, interpret=False,
                           mode="dropless" if path == "ragged" else "capacity",
                           tiling=(512, 512, 512))
      return jnp.sum(y.astype(jnp.float32))
    fn = jax.jit(jax.grad(loss, argnums=(0, 2, 3, 4, 5)))
    t0 = time.time()
    c = fn.trace(sd((t, d), jnp.bfloat16), ids, sd((t, k), jnp.float32),
                 sd((e, d, f), jnp.bfloat16), sd((e, d, f), jnp.bfloat16),
                 sd((e, f, d), jnp.bfloat16)).lower().compile()
    mem = c.memory_analysis()
    print(f"{path:>9} {mem.temp_size_in_bytes / 2**20:>10.1f} "
          f"{mem.argument_size_in_bytes / 2**20:>10.1f} {mem.output_size_in_bytes / 2**20:>10.1f} "
          f"{time.time() - t0:>10.1f}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="one small size, CI form")
  args = ap.parse_args()
  if args.quick:
    step_times([(64, 128, 128, 8, 2)], reps=2)
    tpu_memory(4 * 512, 512, 512, 8, 2)
  else:
    step_times([(64, 128, 128, 8, 2), (256, 256, 512, 8, 2), (512, 256, 256, 16, 1)], reps=3)
    tpu_memory(4 * 2048, 2048, 2048, 16, 2)


if __name__ == "__main__":
  main()
