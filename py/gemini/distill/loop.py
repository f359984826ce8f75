"""The resumable loop every distillation and post-training stage runs.

`run(workdir, init_state, step, data, steps, ...)`: restores the newest complete Orbax
checkpoint under `workdir/checkpoints` (train state + the data's `state()`) or starts from
`init_state()`, then applies `step(state, batch) -> (state, metrics)` to `data.next()` until
`steps`, writing `workdir/metrics.jsonl` (one record per step), a progress line with rate and
ETA, `workdir/loss.png`, and a checkpoint every `checkpoint_every` steps and at the end. Steps
are deterministic functions of (state, batch), and the data position and the PRNG key live in
the checkpoint, so a run killed at any point and restarted ends with bit-identical weights.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np

from gemini.distill import progress
from gemini.train import checkpoint as ckpt_lib
from gemini.train import metrics as metrics_lib


def abstract_of(state: Any) -> Any:
  """ShapeDtypeStructs (with the single device's sharding) for Orbax restore."""
  sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state)


def run(workdir: str, init_state: Callable[[], Any], step: Callable, data: Any, steps: int, *,
        checkpoint_every: int = 50, tokens_per_step: int = 0, log: Callable[[str], None] = print,
        log_every: int = 10, name: str = "step",
        on_checkpoint: Optional[Callable[[int, Any], None]] = None) -> Any:
  """Runs (or resumes) the loop; returns the final state (jax arrays)."""
  os.makedirs(workdir, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=2)
  metrics = metrics_lib.MetricsLog(os.path.join(workdir, "metrics.jsonl"))
  state = init_state()
  start = ckpt.latest_step()
  if start is not None:
    state, extra = ckpt.restore(start, abstract_of(state))
    data.restore(extra["data"])
    log(f"resumed from checkpoint step {start}")
  start = start or 0
  recent = []
  try:
    for i in range(start, steps):
      t0 = time.perf_counter()
      state, m = step(state, data.next())
      scalars = {k: float(v) for k, v in m.items() if np.ndim(v) == 0}
      dt = time.perf_counter() - t0
      if i > start:                              # the first step of a process compiles
        recent = (recent + [dt])[-20:]
      avg = float(np.mean(recent)) if recent else dt
      record = dict(scalars, step=i + 1, step_time_s=dt)
      if tokens_per_step:
        record["tokens_per_s"] = tokens_per_step / dt
      metrics.write(record)
      done = i + 1
      if log_every and (done % log_every == 0 or done == start + 1 or done == steps):
        rate, unit = ((tokens_per_step / avg, "tok/s") if tokens_per_step else (1 / avg, "step/s"))
        log(progress.line(name, done, steps, rate, unit, avg * (steps - done),
                          f"loss {scalars.get('loss', float('nan')):.4f}"))
      if done % checkpoint_every == 0 or done == steps:
        ckpt.save(done, state, {"data": data.state(), "step": done})
        metrics_lib.plot_loss(metrics.path, os.path.join(workdir, "loss.png"), reference=None)
        if on_checkpoint is not None:
          on_checkpoint(done, state)
  finally:
    ckpt.close()
  return state


def restore_final(workdir: str, like: Any) -> Any:
  """The newest checkpoint of a finished stage as a state shaped like `like` (what the next
  stage reads)."""
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, async_save=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"{workdir}/checkpoints: no complete checkpoint")
    state, _ = ckpt.restore(step, abstract_of(like))
    return state
  finally:
    ckpt.close()
