"""Ring attention benchmark: memory by compilation.

  bazel run //pallas/ring_attention:bench [-- --quick]

1. Per-device temporary memory (compiled.memory_analysis()) of one attention layer's
   forward+backward on 8 v5e chips, sequence over `context`, for the remote-DMA ring and for
   dense XLA attention, seq 4k..128k: the ring grows linearly, dense quadratically.
3. One Pro-shaped attention layer (64 heads, 8 kv heads, head_dim 128: the `pro` preset's
   attention) at 1M tokens, forward+backward, compiled for a v5p topology with the sequence
   over `context`, per-device memory next to v5p HBM (95 GiB).
Section 2 (the longest sequence a one-layer model trains with impl="ring" on this machine)
needs the model: `bazel run //py/gemini/model:ring_bench`.
Speed on TPU needs real hardware; nothing here claims it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

# libtpu is installed (for the TPU compiler): keep the default backend on the CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from pallas.ring_attention import aot  # pylint: disable=wrong-import-position
from pallas.testing import tpu_topology  # pylint: disable=wrong-import-position

GIB = 1 << 30
V5P_HBM = 95 * GIB
PRO_ATTENTION = dict(heads=64, kv_heads=8, head_dim=128)   # the `pro` preset's attention


def _fmt(b: float) -> str:
  return f"{b / GIB:9.3f} GiB" if b >= GIB / 10 else f"{b / (1 << 20):9.1f} MiB"


def _temp_bytes(kind, mesh, seq, shape):
  """(per-device temp bytes, over_hbm). XLA refuses to compile programs whose temporaries exceed
  the chip's HBM; its error states the bytes needed, which is the number we report then."""
  try:
    return aot.memory(aot.compile_attention(kind, mesh, seq=seq, **shape))["temp"], False
  except jax.errors.JaxRuntimeError as e:
    found = re.search(r"HLO temporaries \(([0-9.]+)([KMGT])\)", str(e))
    if not found:
      raise
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[found.group(2)]
    return float(found.group(1)) * scale, True


def memory_table(seqs, topology="v5e:2x4"):
  """Section 1: per-device temp bytes, ring (DMA kernel) vs dense, fwd+bwd."""
  mesh = tpu_topology.tpu_mesh(topology, (8,), ("context",))
  shape = dict(batch=1, heads=8, kv_heads=1, head_dim=128, dtype=jnp.bfloat16)
  print(f"\n== 1. per-device temporary memory, one attention layer fwd+bwd, {topology} "
        f"(8 chips, seq over 'context'), H=8 K=1 Dh=128 bf16")
  print(f"{'seq':>8} {'ring temp':>14} {'x prev':>7} {'dense temp':>14} {'x prev':>7} "
        f"{'dense/ring':>10} {'compile s':>9}")
  prev = None
  rows = []
  for s in seqs:
    t0 = time.time()
    ring, ring_oom = _temp_bytes("ring_dma", mesh, s, shape)
    dense, dense_oom = _temp_bytes("dense", mesh, s, shape)
    gr = f"{ring / prev[0]:7.2f}" if prev else f"{'':>7}"
    gd = f"{dense / prev[1]:7.2f}" if prev else f"{'':>7}"
    mark = lambda oom: "*" if oom else " "
    print(f"{s:>8} {_fmt(ring):>13}{mark(ring_oom)} {gr} {_fmt(dense):>13}{mark(dense_oom)} {gd} "
          f"{dense / ring:10.1f} {time.time() - t0:9.1f}", flush=True)
    prev = (ring, dense)
    rows.append((s, ring, dense))
  print("(doubling seq: linear growth shows x2.00, quadratic x4.00; * = over the chip's 16 GiB "
        "HBM, XLA refused to compile and reported the bytes it needed)")
  return rows


def pro_layer(topology, seq):
  """Section 3: Pro-shaped attention layer, fwd+bwd, compiled for v5p."""
  devices = tpu_topology.tpu_topology(topology)
  n = len(devices)
  mesh = tpu_topology.tpu_mesh(topology, (n,), ("context",))
  print(f"\n== 3. Pro attention layer (H={PRO_ATTENTION['heads']}, "
        f"K={PRO_ATTENTION['kv_heads']}, Dh={PRO_ATTENTION['head_dim']}) at {seq} tokens, fwd+bwd, {topology} ({n} chips, "
        f"{seq // n} tokens per chip), remote-DMA ring")
  t0 = time.time()
  compiled = aot.compile_attention("ring_dma", mesh, batch=1, seq=seq, **PRO_ATTENTION,
                                   dtype=jnp.bfloat16, block_q=512, block_k=512)
  mem = aot.memory(compiled)
  for k in ("argument", "output", "temp", "total"):
    print(f"  {k:>9}: {_fmt(mem[k])}")
  print(f"  v5p HBM : {_fmt(V5P_HBM)}  -> total uses {100 * mem['total'] / V5P_HBM:.1f}% "
        f"(compile {time.time() - t0:.0f} s)")
  return mem


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="short CI form")
  ap.add_argument("--pro_topology", default="v5p:2x2x2")
  ap.add_argument("--sections", default="1,3", help="comma-separated subset of 1,3")
  ap.add_argument("--seqs", default="", help="section 1 sequence lengths, comma-separated")
  args = ap.parse_args(argv)
  sections = {int(x) for x in args.sections.split(",")}
  if 1 in sections:
    seqs = [4096, 8192] if args.quick else [4096 << i for i in range(6)]
    seqs = [int(x) for x in args.seqs.split(",")] if args.seqs else seqs
    rows = memory_table(seqs)
    ring = np.array([r[1] for r in rows], float)
    dense = np.array([r[2] for r in rows], float)
    print(f"growth over {seqs[0]}..{seqs[-1]}: ring x{ring[-1] / ring[0]:.1f}, "
          f"dense x{dense[-1] / dense[0]:.1f}, seq x{seqs[-1] / seqs[0]:.0f}")
  if 3 in sections:
    pro_layer(args.pro_topology, 1 << 20)
  return 0


if __name__ == "__main__":
  sys.exit(main())
