"""Ahead-of-time compilation of the real train step for a TPU topology, from shapes alone.

The step is the trainer's own (`gemini.train.step.make_train_step` with the AdamW optimizer
of `gemini.train.optimizer` and the decoder loss `gemini.model.transformer.loss_fn` through
`gemini.train.model_fns.gemini_model`), jitted with the trainer's state and batch shardings
(`gemini.train.trainer.state_shardings`, `gemini.sharding`) and the state donated, as a real
run would. Parameters, optimizer state and batch are `jax.ShapeDtypeStruct`s with
NamedShardings over real TPU devices from libtpu (`gemini.testing.tpu_topology`), shapes from
`jax.eval_shape`: nothing is allocated, so Ultra-sized steps compile on a laptop.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import tempfile
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax.experimental import mesh_utils

from gemini import sharding, testing
from gemini.config import ModelConfig
from gemini.train import model_fns, optimizer, step as step_lib
from gemini.train.train_config import TrainConfig
from gemini.train.trainer import state_shardings

BATCH_KEYS = ("tokens", "targets", "segment_ids", "positions")


def _allow_shared_libtpu():
  # libtpu takes /tmp/libtpu_lockfile per process; we only compile (no chip is touched),
  # so several compiling processes on one machine are safe.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def format_mesh(mesh: Dict[str, int]) -> str:
  return ",".join(f"{k}={v}" for k, v in mesh.items() if v > 1) or "data=1"


def tpu_mesh(topology: str, axes: Dict[str, int]) -> jax.sharding.Mesh:
  """A Mesh over the TPU devices of `topology` with named axis sizes (product = chips).

  Devices are laid out by `mesh_utils.create_device_mesh` (physical torus order, so the
  innermost axes ride on neighbouring links) when it accepts the shape, else in id order.
  """
  _allow_shared_libtpu()
  devices = testing.tpu_topology(topology)
  shape = tuple(axes.values())
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh {format_mesh(axes)} has {math.prod(shape)} devices; {topology} has "
                     f"{len(devices)} chips")
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, AssertionError, NotImplementedError):
    grid = np.array(devices).reshape(shape)
  return jax.sharding.Mesh(grid, tuple(axes), axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


@dataclasses.dataclass(frozen=True)
class StepShapes:
  """Abstract (sharded) train state and batch of one compile."""
  state: dict
  batch: dict
  param_bytes: int          # f32 master weights, whole model (all devices)
  state_bytes: int          # params + optimizer state + step/rng, whole model


def _tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def train_step_fn(cfg: ModelConfig, mesh, batch: int, seq: int, attn_impl: str = "xla",
                  moe_impl: str = "xla", remat: bool = False, unroll: int = 1):
  """(jitted step(state, batch) -> (state, metrics), StepShapes) for `cfg` on `mesh`.

  unroll: blocks of layers per iteration of the layer scan (1: the program the trainer
  runs; 2: the same model with two blocks per iteration, from which `figures` learns what
  one iteration costs)."""
  tc = TrainConfig(batch_size=batch, seq_len=seq)
  model = model_fns.gemini_model(cfg, seq, attn_impl=attn_impl, moe_impl=moe_impl,
                                 remat="full" if remat else "none", unroll=unroll)
  opt = optimizer.make_optimizer(tc, model.decay_mask)
  sched = optimizer.lr_schedule(tc)
  params = jax.eval_shape(model.init, jax.random.key(0))
  abstract = jax.eval_shape(lambda p: step_lib.init_state(p, opt, 0), params)
  st_sh = state_shardings(abstract, model.param_shardings(params, mesh), mesh)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract, st_sh)
  b_sh = sharding.batch_sharding(mesh, (batch, seq))
  batch_sds = {k: jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=b_sh) for k in BATCH_KEYS}
  fn = step_lib.make_train_step(model.make_loss(mesh), opt, sched)
  jitted = jax.jit(fn, in_shardings=(st_sh, {k: b_sh for k in BATCH_KEYS}),
                   out_shardings=(st_sh, None), donate_argnums=0)
  return jitted, StepShapes(state, batch_sds, _tree_bytes(params), _tree_bytes(abstract))


def shard_bytes(tree) -> int:
  """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (device 0's shard)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape)
    total += int(np.prod(shape)) * jnp.dtype(x.dtype).itemsize
  return total


@dataclasses.dataclass
class CompileResult:
  """A compiled step, or what the compiler told us when the program did not fit in HBM."""
  compiled: object                 # jax Compiled, or None when the compiler ran out of HBM
  lowered: object                  # jax Lowered (for cost_analysis when compiled is None)
  shapes: StepShapes
  hlo_text: str                    # optimised, partitioned HLO ("" if unavailable)
  oom_total_bytes: float = 0.0     # HBM the compiler said the program needs (OOM case)


def _dump_options(path: str) -> dict:
  """XLA debug options that write the optimised HLO of this compile, as text, into `path`.

  Why a dump: `Compiled.as_text()` round-trips the module through a proto, which fails for
  some TPU async ops of large programs, and a program the compiler rejects as too big for HBM
  has no Compiled at all; the dump exists in both cases. Passed per compile (compile
  options), so nothing global changes.
  """
  return {"xla_dump_to": path, "xla_dump_hlo_as_text": True,
          "xla_dump_hlo_module_re": "jit_step"}


def _read_dump(path: str) -> Tuple[str, float]:
  """(optimised HLO text, memory-report total bytes) of the jit_step dump in `path`."""
  files = sorted(glob.glob(os.path.join(path, "*jit_step*after_optimizations.txt")),
                 key=os.path.getmtime)
  if not files:
    return "", 0.0
  with open(files[-1]) as f:
    text = f.read()
  total = 0.0
  report = files[-1][:-len(".txt")] + "-memory-usage-report.txt"
  if os.path.exists(report):
    with open(report) as f:
      m = re.search(r"Total bytes: (\d+)", f.read())
      total = float(m.group(1)) if m else 0.0
  return text, total


_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)")


def compile_train_step(cfg: ModelConfig, topology: str, mesh_axes: Dict[str, int], batch: int,
                       seq: int, attn_impl: str = "xla", moe_impl: str = "xla",
                       remat: bool = False, unroll: int = 1) -> CompileResult:
  """Compiles the train step of the whole model on real TPU devices.

  When the compiler rejects the program as larger than the chip's HBM (CompileTimeHbmOom),
  the result carries the HBM it said was needed instead of a Compiled; anything else raises.
  """
  mesh = tpu_mesh(topology, mesh_axes)
  jitted, shapes = train_step_fn(cfg, mesh, batch, seq, attn_impl, moe_impl, remat, unroll)
  lowered = jitted.trace(shapes.state, shapes.batch).lower()
  with tempfile.TemporaryDirectory(prefix="gemini_aot_hlo_") as dump:
    try:
      compiled = lowered.compile(compiler_options=_dump_options(dump))
    except jax.errors.JaxRuntimeError as e:
      m = _OOM.search(str(e))
      if "CompileTimeHbmOom" not in str(e) or not m:
        raise
      text, total = _read_dump(dump)
      if not total:
        total = float(m.group(1)) * 1024 ** "BKMGT".index(m.group(2) or "B")
      return CompileResult(None, lowered, shapes, text, total)
    text, _ = _read_dump(dump)
  return CompileResult(compiled, lowered, shapes, text or compiled.as_text())

