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
import math
import os
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig

BATCH_KEYS = ("tokens", "targets", "segment_ids", "positions")


def _allow_shared_libtpu():
  # libtpu takes /tmp/libtpu_lockfile per process; we only compile (no chip is touched),
  # so several compiling processes on one machine are safe.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def parse_mesh(text: str) -> Dict[str, int]:
  """"fsdp=64,tensor=8" -> {"fsdp": 64, "tensor": 8} (order kept). ValueError names the part."""
  from gemini.sharding import MESH_AXES  # pylint: disable=import-outside-toplevel
  out: Dict[str, int] = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, sep, value = part.partition("=")
    name = name.strip()
    if not sep or name not in MESH_AXES or not value.strip().isdigit() or int(value) < 1:
      raise ValueError(f"--mesh={text!r}: part {part!r} is not AXIS=N with AXIS one of "
                       f"{', '.join(MESH_AXES)} and N >= 1")
    if name in out:
      raise ValueError(f"--mesh={text!r}: axis {name!r} given twice")
    out[name] = int(value)
  if not out:
    raise ValueError(f"--mesh={text!r}: no axes")
  return out


def format_mesh(mesh: Dict[str, int]) -> str:
  return ",".join(f"{k}={v}" for k, v in mesh.items() if v > 1) or "data=1"


def tpu_mesh(topology: str, axes: Dict[str, int]) -> jax.sharding.Mesh:
  """A Mesh over the TPU devices of `topology` with named axis sizes (product = chips).

  Devices are laid out by `mesh_utils.create_device_mesh` (physical torus order, so the
  innermost axes ride on neighbouring links) when it accepts the shape, else in id order.
  """
  _allow_shared_libtpu()
  from gemini import testing  # pylint: disable=import-outside-toplevel
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
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


def with_layers(cfg: ModelConfig, n_layers: int) -> ModelConfig:
  """`cfg` with its first `n_layers` decoder layers (MoE layer indices kept if below)."""
  moe = cfg.moe
  if moe.layers:
    moe = dataclasses.replace(moe, layers=tuple(i for i in moe.layers if i < n_layers))
  return cfg.replace(n_layers=n_layers, moe=moe)


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
                  moe_impl: str = "xla"):
  """(jitted step(state, batch) -> (state, metrics), StepShapes) for `cfg` on `mesh`."""
  # Imported here: the trainer pulls in checkpointing etc., not needed to parse flags.
  from gemini import sharding  # pylint: disable=import-outside-toplevel
  from gemini.train import model_fns, optimizer, step as step_lib  # pylint: disable=import-outside-toplevel
  from gemini.train.train_config import TrainConfig  # pylint: disable=import-outside-toplevel
  from gemini.train.trainer import state_shardings  # pylint: disable=import-outside-toplevel

  tc = TrainConfig(batch_size=batch, seq_len=seq)
  opt = optimizer.make_optimizer(tc)
  sched = optimizer.lr_schedule(tc)
  model = model_fns.gemini_model(cfg, seq, attn_impl=attn_impl, moe_impl=moe_impl)
  params = jax.eval_shape(model.init, jax.random.key(0))
  abstract = jax.eval_shape(lambda p: step_lib.init_state(p, opt, 0), params)
  st_sh = state_shardings(abstract, sharding.param_shardings(params, mesh), mesh)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract, st_sh)
  b_sh = sharding.batch_sharding(mesh, (batch, seq))
  batch_sds = {k: jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=b_sh) for k in BATCH_KEYS}
  fn = step_lib.make_train_step(model.make_loss(mesh), opt, sched)
  jitted = jax.jit(fn, in_shardings=(st_sh, {k: b_sh for k in BATCH_KEYS}),
                   out_shardings=(st_sh, None), donate_argnums=0)
  return jitted, StepShapes(state, batch_sds, _tree_bytes(params), _tree_bytes(abstract))


def compile_train_step(cfg: ModelConfig, topology: str, mesh_axes: Dict[str, int], batch: int,
                       seq: int, attn_impl: str = "xla", moe_impl: str = "xla"):
  """Compiles the train step on real TPU devices. Returns (jax Compiled, StepShapes)."""
  mesh = tpu_mesh(topology, mesh_axes)
  jitted, shapes = train_step_fn(cfg, mesh, batch, seq, attn_impl, moe_impl)
  with jax.sharding.use_mesh(mesh) if hasattr(jax.sharding, "use_mesh") else _nullcontext():
    compiled = jitted.trace(shapes.state, shapes.batch).lower().compile()
  return compiled, shapes


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False
