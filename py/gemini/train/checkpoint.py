"""Orbax checkpoints of the train state plus the data loader's position and RNG state.

Layout (Orbax CheckpointManager): `DIR/checkpoints/<step>/{state, extra}`
  state  the train-state pytree (step, f32 params, optimizer moments, rng key data)
  extra  JSON: {"loader": <loader.state()>, "step": int, ...}; bytes are stored as
         {"__b64__": "..."} and numpy arrays as {"__nd__": list, "dtype": str}

Saves are asynchronous (device arrays are copied to host before `save` returns, the writes
finish in a background thread) and atomic: Orbax writes into a temporary directory and
renames it when complete, and `latest_step` only lists finalised steps, so a checkpoint
half-written when the process died is never picked. `keep` newest checkpoints are kept.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp


def _to_json(x: Any) -> Any:
  if isinstance(x, bytes):
    return {"__b64__": base64.b64encode(x).decode("ascii")}
  if isinstance(x, np.ndarray):
    return {"__nd__": x.tolist(), "dtype": str(x.dtype)}
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, dict):
    return {str(k): _to_json(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_to_json(v) for v in x]
  return x


def _from_json(x: Any) -> Any:
  if isinstance(x, dict):
    if set(x) == {"__b64__"}:
      return base64.b64decode(x["__b64__"])
    if set(x) == {"__nd__", "dtype"}:
      return np.asarray(x["__nd__"], dtype=x["dtype"])
    return {k: _from_json(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_from_json(v) for v in x]
  return x


class Checkpointer:
  """Async, atomic, keep-N checkpoints of (train state, JSON extras) under `directory`."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state: Any, extra: Dict[str, Any]) -> None:
    """Starts saving `state` (pytree of jax arrays) and `extra` (JSON-able) as `step`."""
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        extra=ocp.args.JsonSave(_to_json(extra))), force=True)

  def latest_step(self) -> Optional[int]:
    """The newest fully written step, or None."""
    self._mngr.reload()
    return self._mngr.latest_step()

  def all_steps(self):
    self._mngr.reload()
    return list(self._mngr.all_steps())

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    """Restores `step` into the shapes/dtypes/shardings of `abstract_state`
    (a pytree of jax.ShapeDtypeStruct with .sharding)."""
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
    return out["state"], _from_json(out["extra"])

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()

