"""The real TPU compiler (Mosaic, via libtpu's AOT topology) accepts every MoE kernel.

Interpret mode checks numerics; this checks each kernel is a real TPU kernel at realistic
sizes inside jax.shard_map on v5e and v5p topologies, and records memory_analysis().
"""

import os
import time

# Other test processes on the machine may hold libtpu too; share it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import pytest
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from pallas.testing import tpu_topology
from pallas.moe import all_to_all as a2a
from pallas.moe import gmm as gmm_lib

TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1"}


def _mesh(gen):
  topo = TOPOLOGIES[gen]
  n = len(tpu_topology.tpu_topology(topo))
  return tpu_topology.tpu_mesh(topo, (n,), ("expert",)), n


def _sds(mesh, shape, dtype, spec=P("expert")):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def _compile(fn, mesh, in_specs, out_specs, args):
  sm = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  t0 = time.time()
  compiled = jax.jit(sm).trace(*args).lower().compile()
  mem = compiled.memory_analysis()
  print(f"compiled in {time.time() - t0:.1f}s: args {mem.argument_size_in_bytes} "
        f"out {mem.output_size_in_bytes} temp {mem.temp_size_in_bytes} "
        f"code {mem.generated_code_size_in_bytes}")
  return compiled, mem


@pytest.mark.parametrize("gen", ["v5e", "v5p"])
@pytest.mark.parametrize("kind", ["gmm", "gmm_t", "tgmm"])
def test_gmm_compiles(gen, kind):
  # Per device: 8192 assignment rows, D=4096 -> F=2048 over 8 local experts, bf16.
  mesh, n = _mesh(gen)
  m, k, f, e = 8192, 4096, 2048, 8
  tiling = (512, 512, 1024)
  if kind == "gmm":
    fn = lambda x, w, gs: gmm_lib.gmm(x, w, gs, tiling=tiling)
    shapes, out_bytes = [(m, k), (e, k, f)], m * f * 2
  elif kind == "gmm_t":
    fn = lambda x, w, gs: gmm_lib.gmm(x, w, gs, tiling=tiling, transpose_rhs=True)
    shapes, out_bytes = [(m, k), (e, f, k)], m * f * 2
  else:
    fn = lambda x, g, gs: gmm_lib.tgmm(x, g, gs, tiling=tiling)
    shapes, out_bytes = [(m, k), (m, f)], e * k * f * 2
  args = [_sds(mesh, (s[0] * n,) + s[1:], jnp.bfloat16) for s in shapes]
  args.append(_sds(mesh, (e * n,), jnp.int32))
  _, mem = _compile(fn, mesh, (P("expert"),) * 3, P("expert"), args)
  assert mem.output_size_in_bytes == out_bytes


def test_bad_tiling_is_rejected():
  # A row tile of 4 breaks bf16 (16,128) tiling: the real compiler must refuse it,
  # which shows these tests do run Mosaic rather than accept anything.
  mesh, n = _mesh("v5e")
  fn = lambda x, w, gs: gmm_lib.gmm(x, w, gs, tiling=(4, 128, 128))
  args = [_sds(mesh, (64 * n, 128), jnp.bfloat16), _sds(mesh, (2 * n, 128, 128), jnp.bfloat16),
          _sds(mesh, (2 * n,), jnp.int32)]
  with pytest.raises(Exception, match="(?i)mosaic|tile|align|shape"):
    _compile(fn, mesh, (P("expert"),) * 3, P("expert"), args)


@pytest.mark.parametrize("gen", ["v5e", "v5p"])
def test_ragged_exchange_compiles(gen):
  # Pro-like: D=8192 bf16, E=64, 2048 tokens x k=2 per device; dispatch and combine.
  mesh, p = _mesh(gen)
  n, d, e = 4096, 8192, 64

  def fn(x, counts):
    me = lax.axis_index("expert")
    counts_all = lax.all_gather(counts, "expert")
    recv = a2a.ragged_exchange(x, a2a.dispatch_plan(counts_all, me, e // p), out_rows=p * n,
                               axis_name="expert", mesh_axes=("expert",))
    return a2a.ragged_exchange(recv, a2a.combine_plan(counts_all, me, e // p), out_rows=n,
                               axis_name="expert", mesh_axes=("expert",))

  args = [_sds(mesh, (n * p, d), jnp.bfloat16), _sds(mesh, (e * p,), jnp.int32)]
  _, mem = _compile(fn, mesh, (P("expert"), P("expert")), P("expert"), args)
  # The receive buffer (documented bound P * N rows) lives in temp memory.
  assert mem.temp_size_in_bytes >= p * n * d * 2


def test_xla_ragged_all_to_all_path_compiles():
  # lax.ragged_all_to_all has no XLA:CPU lowering; the TPU compiler is where it is checked.
  mesh, p = _mesh("v5e")
  n, d, e = 1024, 1024, 16

  def fn(x, counts):
    me = lax.axis_index("expert")
    counts_all = lax.all_gather(counts, "expert")
    recv = a2a.xla_ragged_dispatch(x, counts_all, me, out_rows=p * n, axis_name="expert")
    return a2a.xla_ragged_combine(recv, counts_all, me, out_rows=n, axis_name="expert")

  args = [_sds(mesh, (n * p, d), jnp.bfloat16), _sds(mesh, (e * p,), jnp.int32)]
  _compile(fn, mesh, (P("expert"), P("expert")), P("expert"), args)
