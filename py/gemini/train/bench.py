"""`tools/bazel run //py/gemini/train:bench [-- --quick]`: training throughput vs matmul peak.

For nano_tiny (dense) and pro_tiny (MoE) on 1 and 8 fake CPU devices (one process with 8
devices; the 1-device runs use a 1-device mesh), prints the train-step time (median of the
timed steps, wall clock, through `Trainer.train_step`), tokens/s, model FLOP/s and MFU:
  model FLOPs = family.train_flops_per_token(cfg, seq) x tokens (3 x forward: every matmul
                of the active parameters, the top-k experts only, plus causal attention)
  peak        = this machine's jnp.dot f32 n x n peak, measured in the same run (peak.py)
The bf16 x bf16 -> f32 dot peak is printed too (context: XLA:CPU runs that form natively).
'cpu ms' is the process CPU time of the median step (all threads): on a shared machine it
moves far less with other users' load than wall time, so it is the figure to compare
builds by; 'load 1m' is the 1-minute load average after the row.
All devices share this machine's cores, so the 8-device rows measure SPMD partitioning
overhead, not more compute. --quick: the CI form (smaller batch and sequence, fewer steps).
--moe_impls=xla,tiled measures MoE presets once per implementation, in the same run.
"""

from __future__ import annotations

import os
import platform
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
_MOE_IMPLS = flags.DEFINE_list("moe_impls", ["tiled"],
                               "MoE implementations (gemini.model.moe.IMPLS) for MoE presets.")
_MALLOC = flags.DEFINE_bool("tune_malloc", True, "glibc malloc settings (host_malloc.py).")


def cpu_description() -> str:
  """CPU model and the vector ISA extensions that matter for XLA:CPU dots."""
  model, isa = platform.processor() or platform.machine(), []
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      info = f.read()
    for line in info.splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
      if line.startswith("flags"):
        have = set(line.split(":", 1)[1].split())
        isa = [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")
               if x in have]
        break
  except OSError:
    pass
  return f"{model} ({os.cpu_count()} cores; {' '.join(isa) or 'ISA unknown'})"


def measure(cfg_name: str, n_devices: int, batch: int, seq: int, steps: int, peak: float,
            moe_impl: str):
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
  model = gemini_model(cfg, seq, moe_impl=moe_impl)
  t = Trainer(model, tc, mesh, SyntheticLoader(cfg.vocab_size, batch, seq), None,
              log=lambda s: None)
  t.init_or_restore()
  t0 = time.perf_counter()
  t.train_step()                                  # Compile.
  compile_s = time.perf_counter() - t0
  t.train_step()                                  # Warm.
  times, cpu = [], []
  for _ in range(steps):
    c0, t0 = time.process_time(), time.perf_counter()
    t.train_step()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  step_s = sorted(times)[len(times) // 2]         # Median: robust to a shared machine.
  cpu_s = sorted(cpu)[len(cpu) // 2]
  tok_s = batch * seq / step_s
  flops = model.flops_per_token * tok_s
  return step_s, tok_s, flops, flops / peak, compile_s, cpu_s


def run(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  from gemini.train import host_malloc  # pylint: disable=import-outside-toplevel
  malloc_note = host_malloc.tune() if _MALLOC.value else "malloc: glibc defaults"
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from gemini import config  # pylint: disable=import-outside-toplevel
  from gemini.model import moe  # pylint: disable=import-outside-toplevel
  from gemini.train.peak import measure_matmul_peak  # pylint: disable=import-outside-toplevel
  from gemini.train.trainer import use_compilation_cache  # pylint: disable=import-outside-toplevel
  for impl in _MOE_IMPLS.value:
    if impl not in moe.IMPLS:
      raise app.UsageError(f"--moe_impls: {impl!r} is not one of {moe.IMPLS}")
  use_compilation_cache(os.path.join(os.path.expanduser("~"), ".cache", "gemini", "jax_cache"))
  batch, seq, steps = (4, 64, 6) if _QUICK.value else (8, 256, 8)
  n = 512 if _QUICK.value else 1024
  peak = measure_matmul_peak(n=n)
  peak_bf16 = measure_matmul_peak(n=n, dtype=jnp.bfloat16, accumulate=jnp.float32)
  print(f"cpu: {cpu_description()}; {malloc_note}", flush=True)
  print(f"MFU = model FLOPs (family.train_flops_per_token x tokens) / step time / matmul peak "
        f"(jnp.dot f32 {n}x{n}, measured now): {peak / 1e9:.1f} GFLOP/s "
        f"[bf16 x bf16 -> f32 dot: {peak_bf16 / 1e9:.1f} GFLOP/s]; batch {batch}x{seq}; "
        f"{jax.device_count()} fake devices available", flush=True)
  header = (f"| {'config':<10} | {'moe_impl':<8} | {'devices':>7} | {'step ms':>8} | "
            f"{'tokens/s':>9} | {'GFLOP/s':>8} | {'MFU':>6} | {'cpu ms':>7} | {'compile s':>9} | "
            f"{'load 1m':>7} |")
  print(header)
  print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
  for name in _CONFIGS.value:
    impls = _MOE_IMPLS.value if config.get_config(name).moe.enabled else ["-"]
    for impl in impls:
      for nd in (int(d) for d in _DEVICES.value):
        if nd > jax.device_count():
          print(f"| {name:<10} | {impl:<8} | {nd:>7} | skipped: only {jax.device_count()} devices")
          continue
        step_s, tok_s, flops, mfu, comp, cpu_s = measure(name, nd, batch, seq, steps, peak,
                                                         "xla" if impl == "-" else impl)
        print(f"| {name:<10} | {impl:<8} | {nd:>7} | {1e3 * step_s:>8.1f} | {tok_s:>9,.0f} | "
              f"{flops / 1e9:>8.2f} | {100 * mfu:>5.1f}% | {1e3 * cpu_s:>7.1f} | {comp:>9.1f} | "
              f"{os.getloadavg()[0]:>7.1f} |", flush=True)


def main():
  app.run(run)


if __name__ == "__main__":
  sys.exit(main())
