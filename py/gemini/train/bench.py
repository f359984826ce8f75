"""`tools/bazel run //py/gemini/train:bench [-- --quick]`: training throughput vs matmul peak.

For nano_tiny (dense) and pro_tiny (MoE) on 1 and 8 fake CPU devices (one process with 8
devices; the 1-device runs use a 1-device mesh), prints the train-step time, tokens/s,
model FLOP/s (family.train_flops_per_token) and MFU, next to this machine's `jnp.dot` f32
peak measured in the same run. All devices share this machine's cores, so the 8-device
rows measure SPMD partitioning overhead, not more compute. --quick: the CI form (smaller
batch and sequence, fewer timed steps).
"""

from __future__ import annotations

import os
import sys
import time

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags, logging  # pylint: disable=wrong-import-position

_QUICK = flags.DEFINE_bool("quick", False, "CI form: small shapes, few steps.")
_CONFIGS = flags.DEFINE_list("configs", ["nano_tiny", "pro_tiny"], "Presets to measure.")
_DEVICES = flags.DEFINE_list("devices", ["1", "8"], "Device counts (mesh data=1, fsdp=n).")


def measure(cfg_name: str, n_devices: int, batch: int, seq: int, steps: int, peak: float):
  import jax  # pylint: disable=import-outside-toplevel
  from gemini import config, sharding  # pylint: disable=import-outside-toplevel
  from gemini.train.model_fns import gemini_model  # pylint: disable=import-outside-toplevel
  from gemini.train.synthetic import SyntheticLoader  # pylint: disable=import-outside-toplevel
  from gemini.train.train_config import TrainConfig  # pylint: disable=import-outside-toplevel
  from gemini.train.trainer import Trainer  # pylint: disable=import-outside-toplevel

  cfg = config.get_config(cfg_name)
  tc = TrainConfig(steps=steps + 2, batch_size=batch, seq_len=seq, checkpoint_every=0,
                   log_every=0)
  mesh = sharding.make_mesh({"fsdp": n_devices}, devices=jax.devices()[:n_devices])
  model = gemini_model(cfg, seq)
  t = Trainer(model, tc, mesh, SyntheticLoader(cfg.vocab_size, batch, seq), None,
              log=lambda s: None)
  t.init_or_restore()
  t0 = time.perf_counter()
  t.train_step()                                  # Compile.
  compile_s = time.perf_counter() - t0
  t.train_step()                                  # Warm.
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    t.train_step()
    times.append(time.perf_counter() - t0)
  step_s = sorted(times)[len(times) // 2]         # Median: robust to a shared machine.
  tok_s = batch * seq / step_s
  flops = model.flops_per_token * tok_s
  return step_s, tok_s, flops, flops / peak, compile_s


def run(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=import-outside-toplevel
  from gemini.train.peak import measure_matmul_peak  # pylint: disable=import-outside-toplevel
  from gemini.train.trainer import use_compilation_cache  # pylint: disable=import-outside-toplevel
  use_compilation_cache(os.path.join(os.path.expanduser("~"), ".cache", "gemini", "jax_cache"))
  batch, seq, steps = (4, 64, 3) if _QUICK.value else (8, 256, 8)
  peak = measure_matmul_peak(n=512 if _QUICK.value else 1024)
  print(f"matmul peak (jnp.dot f32, measured now): {peak / 1e9:.1f} GFLOP/s; "
        f"batch {batch}x{seq}; {jax.device_count()} fake devices available", flush=True)
  header = (f"| {'config':<10} | {'devices':>7} | {'step ms':>8} | {'tokens/s':>9} | "
            f"{'GFLOP/s':>8} | {'MFU':>6} | {'compile s':>9} |")
  print(header)
  print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
  for name in _CONFIGS.value:
    for n in (int(d) for d in _DEVICES.value):
      if n > jax.device_count():
        print(f"| {name:<10} | {n:>7} | skipped: only {jax.device_count()} devices")
        continue
      step_s, tok_s, flops, mfu, comp = measure(name, n, batch, seq, steps, peak)
      print(f"| {name:<10} | {n:>7} | {1e3 * step_s:>8.1f} | {tok_s:>9,.0f} | "
            f"{flops / 1e9:>8.2f} | {100 * mfu:>5.1f}% | {comp:>9.1f} |", flush=True)


def main():
  app.run(run)


if __name__ == "__main__":
  sys.exit(main())
