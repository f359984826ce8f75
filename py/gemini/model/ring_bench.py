"""Longest sequence a one-layer model trains with attention impl="ring" on this machine.

  bazel run //py/gemini/model:ring_bench [-- --quick] [--budget SECONDS]

Forward+backward of nano_tiny with 1 layer, attention impl="ring" (ppermute ring,
interpreted kernels) on 8 fake CPU devices over `context`, doubling the sequence from 1k
until one run takes longer than the budget (or fails). The kernel-level memory and Pro-layer
figures are `bazel run //pallas/ring_attention:bench`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Fake CPU devices; must be set before jax is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from gemini import config as config_lib  # pylint: disable=wrong-import-position
from gemini.model import transformer  # pylint: disable=wrong-import-position


def longest_sequence(start, limit, budget_s):
  """One-layer nano_tiny forward+backward with impl='ring' on 8 CPU devices."""
  devices = jax.devices("cpu")[:8]
  mesh = jax.make_mesh((8,), ("context",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)
  print(f"\n== longest sequence: nano_tiny with 1 layer, fwd+bwd, attn impl='ring' "
        f"(ppermute, interpreted kernels) on {len(devices)} CPU devices, budget {budget_s:.0f} s")
  print(f"{'seq':>8} {'run s':>9} {'tokens/s':>9} {'compile s':>9}")
  best = None
  s = start
  while s <= limit:
    cfg = config_lib.PRESETS["nano_tiny"].replace(n_layers=1, max_seq_len=s)
    params = transformer.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, s), 0, cfg.vocab_size, jnp.int32)
    batch = {"tokens": tokens, "targets": jnp.roll(tokens, -1, axis=1),
             "segment_ids": jnp.ones((1, s), jnp.int32),
             "positions": jnp.arange(s, dtype=jnp.int32)[None]}
    grad = jax.jit(jax.grad(lambda p: transformer.loss_fn(p, batch, cfg, attn_impl="ring",
                                                          mesh=mesh)[0]))
    t0 = time.time()
    try:
      compiled = grad.lower(params).compile()
      t1 = time.time()
      g = jax.block_until_ready(compiled(params))
    except Exception as e:  # Out of memory is the expected way to stop.
      print(f"{s:>8} failed: {type(e).__name__}: {str(e)[:200]}")
      break
    dt = time.time() - t1
    ok = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
    print(f"{s:>8} {dt:9.1f} {s / dt:9.0f} {t1 - t0:9.1f}{'' if ok else '  NON-FINITE GRADS'}",
          flush=True)
    if not ok:
      break
    best = s
    if dt > budget_s:
      break
    s *= 2
  print(f"longest finished: {best} tokens")
  return best


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="short CI form (1k and 2k)")
  ap.add_argument("--budget", type=float, default=60.0,
                  help="stop doubling once a run takes longer than this (s)")
  args = ap.parse_args(argv)
  longest_sequence(1024, 2048 if args.quick else 1 << 17, args.budget)
  return 0


if __name__ == "__main__":
  sys.exit(main())
