"""`tools/bazel run //py/gemini/train:bench [-- --quick]`: training throughput vs matmul peak.

For nano_tiny (dense) and pro_tiny (MoE) on 1 and 8 fake CPU devices (one process with 8
devices; the 1-device runs use a 1-device mesh), prints the train-step time (wall clock,
through `Trainer.train_step`), tokens/s, model FLOP/s and MFU:
  model FLOPs = family.train_flops_per_token(cfg, seq) x tokens (3 x forward: every matmul
                of the active parameters, the top-k experts only, plus causal attention)
  peak        = this machine's jnp.dot f32 n x n rate, measured in the same run (peak.py)
Every model is compiled and warmed first; then --rounds rounds each measure, for every row in
turn, the f32 peak (median of 5 samples of 10 back-to-back dots) immediately followed by
--steps timed steps (their median), and that row's MFU for the round is their ratio. Pairing
each step median with a peak taken moments before cancels most of a shared machine's
drifting load; the row prints the median MFU over rounds and its min-max, the median step
and the median peak it was divided by. The bf16 x bf16 -> f32 dot rate is printed too
(context: XLA:CPU runs that form natively, on AMX where the CPU has it).
'cpu ms' is the process CPU time of the median step (all threads): on a shared machine it
moves far less with other users' load than wall time, so it is the figure to compare
builds by. The load averages are printed before the first and after the last row.
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
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds of (peak, timed steps) per row.")
_STEPS = flags.DEFINE_integer("steps", 0, "Timed steps per row and round (0: 6, or 8 without "
                              "--quick).")
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


def _median(xs):
  return sorted(xs)[len(xs) // 2]


class _Row:
  """One (config, moe_impl, devices) row: a compiled, warmed trainer and its samples."""

  def __init__(self, cfg_name: str, n_devices: int, batch: int, seq: int, moe_impl: str):
    import jax  # pylint: disable=import-outside-toplevel
    from gemini import config, sharding  # pylint: disable=import-outside-toplevel
    from gemini.train.model_fns import gemini_model  # pylint: disable=import-outside-toplevel
    from gemini.train.synthetic import SyntheticLoader  # pylint: disable=import-outside-toplevel
    from gemini.train.train_config import TrainConfig  # pylint: disable=import-outside-toplevel
    from gemini.train.trainer import Trainer  # pylint: disable=import-outside-toplevel

    cfg = config.get_config(cfg_name)
    self.tokens = batch * seq
    tc = TrainConfig(steps=1_000_000, batch_size=batch, seq_len=seq, checkpoint_every=0,
                     log_every=0)
    mesh = sharding.make_mesh({"fsdp": n_devices}, devices=jax.devices()[:n_devices])
    self.model = gemini_model(cfg, seq, moe_impl=moe_impl)
    self.trainer = Trainer(self.model, tc, mesh, SyntheticLoader(cfg.vocab_size, batch, seq),
                           None, log=lambda s: None)
    self.trainer.init_or_restore()
    t0 = time.perf_counter()
    self.trainer.train_step()                     # Compile.
    self.compile_s = time.perf_counter() - t0
    self.trainer.train_step()                     # Warm.
    self.step_s, self.cpu_s, self.peaks, self.mfu = [], [], [], []

  def round(self, steps: int, peak_fn) -> None:
    """One round: the peak now, then `steps` timed steps; records their medians and MFU."""
    peak = peak_fn()
    times, cpu = [], []
    for _ in range(steps):
      c0, t0 = time.process_time(), time.perf_counter()
      self.trainer.train_step()
      times.append(time.perf_counter() - t0)
      cpu.append(time.process_time() - c0)
    step_s = _median(times)
    self.step_s.append(step_s)
    self.cpu_s.append(_median(cpu))
    self.peaks.append(peak)
    self.mfu.append(self.model.flops_per_token * self.tokens / step_s / peak)


def _load() -> str:
  return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  from gemini.train import host_malloc  # pylint: disable=import-outside-toplevel
  malloc_note = host_malloc.tune() if _MALLOC.value else "malloc: glibc defaults"
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from gemini import config  # pylint: disable=import-outside-toplevel
  from gemini.model import moe  # pylint: disable=import-outside-toplevel
  from gemini.train.peak import matmul_rates  # pylint: disable=import-outside-toplevel
  from gemini.train.trainer import use_compilation_cache  # pylint: disable=import-outside-toplevel
  for impl in _MOE_IMPLS.value:
    if impl not in moe.IMPLS:
      raise app.UsageError(f"--moe_impls: {impl!r} is not one of {moe.IMPLS}")
  if _ROUNDS.value < 1:
    raise app.UsageError("--rounds must be >= 1")
  use_compilation_cache(os.path.join(os.path.expanduser("~"), ".cache", "gemini", "jax_cache"))
  batch, seq, steps = (4, 64, 6) if _QUICK.value else (8, 256, 8)
  steps = _STEPS.value or steps
  n = 512 if _QUICK.value else 1024
  peak_fn = lambda: _median(matmul_rates(n=n, reps=5, calls=10))
  print(f"cpu: {cpu_description()}; {malloc_note}", flush=True)
  print(f"start: {_load()}", flush=True)

  rows, skipped = [], []
  for name in _CONFIGS.value:
    impls = _MOE_IMPLS.value if config.get_config(name).moe.enabled else ["-"]
    for impl in impls:
      for nd in (int(d) for d in _DEVICES.value):
        if nd > jax.device_count():
          skipped.append(f"| {name:<10} | {impl:<8} | {nd:>7} | skipped: only "
                         f"{jax.device_count()} devices")
          continue
        rows.append(((name, impl, nd),
                     _Row(name, nd, batch, seq, "xla" if impl == "-" else impl)))
  bf16 = []
  for _ in range(_ROUNDS.value):
    bf16.append(_median(matmul_rates(n=n, reps=5, dtype=jnp.bfloat16,
                                     accumulate=jnp.float32, calls=10)))
    for _, row in rows:
      row.round(steps, peak_fn)
  peaks = [p for _, row in rows for p in row.peaks]
  print(f"MFU = model FLOPs (family.train_flops_per_token x tokens) / step time / matmul peak "
        f"(jnp.dot f32 {n}x{n}, measured in this run before each row's steps, median of 5 x 10 "
        f"dots): median {_median(peaks) / 1e9:.1f} GFLOP/s, range {min(peaks) / 1e9:.1f}-"
        f"{max(peaks) / 1e9:.1f} [bf16 x bf16 -> f32 dot: median {_median(bf16) / 1e9:.1f}, "
        f"range {min(bf16) / 1e9:.1f}-{max(bf16) / 1e9:.1f}]; batch {batch}x{seq}; "
        f"{_ROUNDS.value} rounds x {steps} steps per row; {jax.device_count()} fake devices",
        flush=True)
  header = (f"| {'config':<10} | {'moe_impl':<8} | {'devices':>7} | {'step ms':>8} | "
            f"{'tokens/s':>9} | {'GFLOP/s':>8} | {'MFU':>6} | {'MFU min-max':>13} | "
            f"{'peak':>6} | {'cpu ms':>7} | {'compile s':>9} |")
  print(header)
  print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
  for (name, impl, nd), row in rows:
    step_s = _median(row.step_s)
    tok_s = row.tokens / step_s
    flops = row.model.flops_per_token * tok_s
    mfu = f"{100 * min(row.mfu):.1f}-{100 * max(row.mfu):.1f}%"
    print(f"| {name:<10} | {impl:<8} | {nd:>7} | {1e3 * step_s:>8.1f} | {tok_s:>9,.0f} | "
          f"{flops / 1e9:>8.2f} | {100 * _median(row.mfu):>5.1f}% | {mfu:>13} | "
          f"{_median(row.peaks) / 1e9:>6.1f} | {1e3 * _median(row.cpu_s):>7.1f} | "
          f"{row.compile_s:>9.1f} |", flush=True)
  for line in skipped:
    print(line)
  print(f"end: {_load()}", flush=True)


def main():
  app.run(run)


if __name__ == "__main__":
  sys.exit(main())
