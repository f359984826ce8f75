"""`tools/bazel run //py/gemini/train/aot:compile_bench [-- --quick]`: compile cost vs depth.

Compiles the train step (forward + backward + an SGD update) of a nano1-shaped decoder at
4, 8, 16 and 32 layers two ways in one run: the layer scan unrolled (`unroll=True`, the same
program as a Python loop over layers, what the decoder was before its layers were stacked)
and scanned (the decoder as it is). Prints compile seconds and optimised-HLO size for each,
and their ratios to the 4-layer figures, for the CPU backend (this machine; the program is
compiled, not run, from abstract shapes, so nothing is allocated). --quick: widths / 8 and
depths 2, 4, 8 (the CI form).
"""

from __future__ import annotations

import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from gemini import config  # pylint: disable=wrong-import-position
from gemini.model import spec, transformer  # pylint: disable=wrong-import-position

_QUICK = flags.DEFINE_bool("quick", False, "CI form: narrow model, depths 2, 4, 8.")
_SEQ = flags.DEFINE_integer("seq", 128, "Sequence length of the compiled step.")


def nano1_shaped(layers: int, quick: bool) -> config.ModelConfig:
  cfg = config.get_config("nano1").replace(n_layers=layers, dtype="bfloat16")
  if quick:
    cfg = cfg.replace(d_model=256, d_ff=1280, head_dim=32, vocab_size=8192)
  return cfg


def compile_step(cfg: config.ModelConfig, seq: int, unroll: bool):
  """(compile seconds, optimised HLO characters) of one SGD train step."""
  def step(params, tokens):
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:]}
    loss, grads = jax.value_and_grad(
        lambda p: transformer.loss_fn(p, batch, cfg, unroll=unroll)[0])(params)
    return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), loss

  params = spec.abstract_params(cfg)
  tokens = jax.ShapeDtypeStruct((1, seq + 1), jnp.int32)
  t0 = time.perf_counter()
  compiled = jax.jit(step).lower(params, tokens).compile()
  seconds = time.perf_counter() - t0
  return seconds, len(compiled.as_text())


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def main(argv):
  del argv
  quick = _QUICK.value
  depths = (2, 4, 8) if quick else (4, 8, 16, 32)
  print(f"CPU: {cpu_name()}  backend: {jax.default_backend()}  jax {jax.__version__}")
  print(f"nano1-shaped train step{' (quick: widths / 8)' if quick else ''}, batch 1 x "
        f"{_SEQ.value}; ratios against the {depths[0]}-layer compile of the same kind")
  print(f"{'layers':>6} | {'unrolled s':>10} {'x':>5} {'HLO MB':>7} {'x':>5} | "
        f"{'scanned s':>9} {'x':>5} {'HLO MB':>7} {'x':>5}")
  base = {}
  for layers in depths:
    row = []
    for unroll in (True, False):
      sec, size = compile_step(nano1_shaped(layers, quick), _SEQ.value, unroll)
      b_sec, b_size = base.setdefault(unroll, (sec, size))
      row.append(f"{sec:10.1f} {sec / b_sec:5.2f} {size / 1e6:7.2f} {size / b_size:5.2f}")
    print(f"{layers:>6} | {row[0]} | {row[1]}", flush=True)


if __name__ == "__main__":
  app.run(main)
