"""Orbax checkpoints of the train state that prove themselves on restore.

Layout (Orbax CheckpointManager): `DIR/<step>/`
  state        the train state, any pytree of arrays (step, f32 params, moments, rng key data)
  extra        JSON: {"loader": <loader.state()>, "step": int, "loss": float, ...}; bytes are
               stored as {"__b64__": "..."} and numpy arrays as {"__nd__": list, "dtype": str}
  model        JSON: {"config": ModelConfig as a dict, "tokenizer": {"kind", "data"}} (or {})
  integrity    JSON (written in the same Orbax save, so it is atomic with the step):
               {"version": 1, "arrays": {"a/b/c": {"crc32c", "shape", "dtype"}},
                "extra_crc32c": int, "model_crc32c": int}
               CRC-32C (gemini.crc32c) of each array's C-order bytes and of the canonical JSON
               (sorted keys, no spaces) of `extra` and `model`.
  FILES.json   written once the step is final: {"files": {relpath: {"size", "crc32c"}},
               "crc32c": CRC-32C of the canonical JSON of "files"}; every other file of the step.

Restore checks FILES.json first (missing, truncated or altered files are named before Orbax
reads anything; a step without it, e.g. killed between the write and the record, is read
without this pre-check), then reads with Orbax, then compares every restored array and the
JSON items with `integrity`. A step that fails is reported in one paragraph, moved to
`DIR.rejected/<step>` (never deleted), and the next older step is tried.

Saves are asynchronous (Orbax copies device arrays to host before `save` returns) and atomic
(Orbax renames a temporary directory when complete; half-written steps are never listed).
When a save is final, `poll`/`wait` write its FILES.json and read it back in full against its
checksums; only then does it count as verified. Retention keeps the `keep` newest steps and,
whatever `keep` is, the newest verified step (whose loss is finite: the trainer never saves a
non-finite state); only steps older than that one are ever deleted.

Multi-process runs gather each array to every host to checksum it (`process_allgather`):
exact, but it costs host memory of the full state.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from gemini import config_flags
from gemini.crc32c import crc32c
from gemini.train.tree_paths import path_name

FILES = "FILES.json"
INTEGRITY_VERSION = 1


class CheckpointError(ValueError):
  """A checkpoint step that cannot be read or does not match its checksums (one paragraph)."""


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


def json_crc(x: Any) -> int:
  """CRC-32C of the canonical JSON text of `x` (sorted keys, compact separators)."""
  return crc32c(json.dumps(x, sort_keys=True, separators=(",", ":")).encode())


def host_tree(tree: Any) -> Any:
  """Full numpy copy of a (possibly multi-process sharded) pytree of arrays."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def array_checksums(tree: Any) -> Dict[str, Dict[str, Any]]:
  """{"a/b/c": {"crc32c", "shape", "dtype"}} of every array leaf of `tree` (C-order bytes)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(host_tree(tree))[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    out[path_name(path)] = {"crc32c": crc32c(a.view(np.uint8).reshape(-1)),
                            "shape": list(a.shape), "dtype": str(a.dtype)}
  return out


def compare_checksums(want: Dict[str, Any], got: Dict[str, Any]) -> List[str]:
  """Human-readable differences between two `array_checksums` results (empty: equal)."""
  problems = []
  for name in sorted(set(want) | set(got)):
    if name not in got:
      problems.append(f"array {name} is missing")
    elif name not in want:
      problems.append(f"array {name} is not in the checksum record")
    elif want[name] != got[name]:
      w, g = want[name], got[name]
      if (w["shape"], w["dtype"]) != (g["shape"], g["dtype"]):
        problems.append(f"array {name} is {g['dtype']}{g['shape']}, recorded "
                        f"{w['dtype']}{w['shape']}")
      else:
        problems.append(f"array {name} has CRC-32C {g['crc32c']:#010x}, recorded "
                        f"{w['crc32c']:#010x}")
  return problems


def file_manifest(step_dir: str) -> Dict[str, Dict[str, int]]:
  """{relpath: {"size", "crc32c"}} of every regular file under `step_dir` except FILES.json."""
  out = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      full = os.path.join(root, name)
      rel = os.path.relpath(full, step_dir)
      if rel == FILES or rel.startswith(FILES + "."):
        continue
      with open(full, "rb") as f:
        data = f.read()
      out[rel] = {"size": len(data), "crc32c": crc32c(data)}
  return out


def check_files(step_dir: str) -> Optional[str]:
  """None if FILES.json is absent (nothing to pre-check) or every listed file matches it;
  else what is wrong, naming the file."""
  manifest_path = os.path.join(step_dir, FILES)
  if not os.path.exists(manifest_path):
    return None
  try:
    with open(manifest_path, "rb") as f:
      record = json.loads(f.read().decode("utf-8"))
    files = record["files"]
    if json_crc(files) != record["crc32c"]:
      return f"{FILES} does not match its own CRC-32C (the file list was altered)"
  except (ValueError, KeyError, TypeError) as e:
    return f"{FILES} is unreadable ({type(e).__name__}: {e})"
  for rel, want in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      return f"file {rel} is missing"
    size = os.path.getsize(full)
    if size != want["size"]:
      return f"file {rel} has {size} bytes, recorded {want['size']} (truncated or extended)"
    with open(full, "rb") as f:
      got = crc32c(f.read())
    if got != want["crc32c"]:
      return f"file {rel} has CRC-32C {got:#010x}, recorded {want['crc32c']:#010x} (altered bytes)"
  return None


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300] if text else ''}"


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  extra: Dict[str, Any]
  model: Dict[str, Any]


class Checkpointer:
  """Async, atomic, self-verifying checkpoints of (train state, JSON extras) in `directory`."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               log=print, verify_writes: bool = True, create: bool = True):
    if keep < 1:
      raise ValueError(f"Checkpointer: keep={keep} must be >= 1")
    self.directory = os.path.abspath(directory)
    self.rejected_dir = self.directory + ".rejected"
    self.keep, self.log, self.verify_writes = keep, log, verify_writes
    self.is_main = jax.process_index() == 0
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=create,
                                           enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)
    self._pending: List[Tuple[int, Any]] = []   # (step, abstract state) saved, not yet final.
    self.verified: set = set()                  # Steps read back (or restored) and checked.

  # -- saving ----------------------------------------------------------------------------

  def save(self, step: int, state: Any, extra: Dict[str, Any],
           model: Optional[Dict[str, Any]] = None) -> None:
    """Starts saving `state` (pytree of arrays) with `extra` (JSON-able, its "loss" finite)
    and `model` (the self-description, see load_for_inference) as `step`."""
    loss = extra.get("loss")
    if loss is not None and not math.isfinite(float(loss)):
      raise CheckpointError(f"refusing to save step {step}: its loss {loss} is not finite")
    self.wait()
    extra_j, model_j = _to_json(extra), _to_json(model or {})
    integrity = {"version": INTEGRITY_VERSION, "arrays": array_checksums(state),
                 "extra_crc32c": json_crc(extra_j), "model_crc32c": json_crc(model_j)}
    if step in self.all_steps():   # A step left over from before a rollback: set it aside.
      self._reject(step, "it is being written again after a rollback")
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra_j),
        model=ocp.args.JsonSave(model_j), integrity=ocp.args.JsonSave(integrity)), force=True)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)),
        state)
    self._pending.append((step, abstract))

  def poll(self) -> None:
    """Finishes the bookkeeping of saves that completed in the background (non-blocking).
    Multi-process runs leave it to `wait` (called by every process at the same step): the
    bookkeeping has collectives, and save completion is seen at different times per process."""
    if self._pending and jax.process_count() == 1 and not self._mngr.is_saving_in_progress():
      self._finalize()

  def wait(self) -> None:
    """Blocks until pending saves are on disk, recorded, verified and retention applied."""
    self._mngr.wait_until_finished()
    self._finalize()

  def _finalize(self) -> None:
    pending, self._pending = self._pending, []
    for step, abstract in pending:
      step_dir = self.step_dir(step)
      if self.is_main:
        files = file_manifest(step_dir)
        tmp = os.path.join(step_dir, FILES + ".tmp")
        with open(tmp, "w") as f:
          json.dump({"files": files, "crc32c": json_crc(files)}, f, sort_keys=True)
          f.flush()
          os.fsync(f.fileno())
        os.replace(tmp, os.path.join(step_dir, FILES))
      _barrier(f"gemini_ckpt_files_{step}")
      if self.verify_writes:
        try:
          self._read(step, abstract)
        except CheckpointError as e:
          self.log(f"checkpoint step {step} in {step_dir} failed its read-back check: {e}; "
                   "it does not count as verified and older steps are kept")
          continue
      self.verified.add(step)
    self._retain()

  def _retain(self) -> None:
    if not self.verified:
      return
    steps = self.all_steps()
    newest_good = max(s for s in self.verified if s in steps) if set(steps) & self.verified \
        else None
    if newest_good is None:
      return
    keep = set(steps[-self.keep:]) | {newest_good}
    for s in steps:
      if s not in keep and s < newest_good:
        self._mngr.delete(s)
        self.verified.discard(s)

  # -- reading ---------------------------------------------------------------------------

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> Optional[int]:
    """The newest finalised step, or None (not necessarily intact: see restore_latest)."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def all_steps(self) -> List[int]:
    self._mngr.reload()
    return sorted(self._mngr.all_steps())

  def _read(self, step: int, abstract_state: Any) -> Restored:
    """Reads and checks `step`; CheckpointError (what is wrong, naming the file) if bad."""
    step_dir = self.step_dir(step)
    if not os.path.isdir(step_dir):
      raise CheckpointError(f"{step_dir} is not a directory")
    problem = check_files(step_dir)
    if problem:
      raise CheckpointError(problem)
    if not os.listdir(step_dir):
      raise CheckpointError("the step directory is empty")
    missing = [n for n in ("state", "extra", "integrity") if not os.path.isdir(
        os.path.join(step_dir, n))]
    if missing:
      raise CheckpointError(f"item(s) {', '.join(missing)} are missing (no {missing[0]}/ "
                            "directory; written by an older version or damaged)")
    args = {"state": ocp.args.StandardRestore(abstract_state), "extra": ocp.args.JsonRestore(),
            "integrity": ocp.args.JsonRestore()}
    if os.path.isdir(os.path.join(step_dir, "model")):
      args["model"] = ocp.args.JsonRestore()
    try:
      with _quiet_orbax():
        out = self._mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # Orbax/TensorStore raise assorted types for damaged files.
      raise CheckpointError(f"Orbax could not read it ({_first_line(e)})") from None
    integrity, extra_j = out["integrity"], out["extra"]
    model_j = out["model"] if "model" in args else {}
    if not isinstance(integrity, dict) or integrity.get("version") != INTEGRITY_VERSION:
      raise CheckpointError(f"integrity record is not version {INTEGRITY_VERSION}: "
                            f"{str(integrity)[:100]}")
    if json_crc(extra_j) != integrity.get("extra_crc32c"):
      raise CheckpointError("extra (data-loader state, step, loss) does not match its CRC-32C")
    if json_crc(model_j) != integrity.get("model_crc32c"):
      raise CheckpointError("model (config, tokenizer) does not match its CRC-32C")
    problems = compare_checksums(integrity.get("arrays", {}), array_checksums(out["state"]))
    if problems:
      more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
      raise CheckpointError(f"state {problems[0]}{more}")
    extra = _from_json(extra_j)
    loss = extra.get("loss") if isinstance(extra, dict) else None
    if loss is not None and not math.isfinite(float(loss)):
      raise CheckpointError(f"its recorded loss {loss} is not finite")
    return Restored(step, out["state"], extra, _from_json(model_j))

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    """Restores and verifies `step` into the shapes/dtypes/shardings of `abstract_state`
    (a pytree of jax.ShapeDtypeStruct with .sharding). CheckpointError if it is bad."""
    r = self._read(step, abstract_state)
    self.verified.add(step)
    return r.state, r.extra

  def restore_latest(self, abstract_state: Any) -> Optional[Restored]:
    """The newest step that reads and verifies (None if there is none). Steps that fail are
    reported in one paragraph each and moved to DIR.rejected/ (kept, never deleted)."""
    self.wait()
    for step in reversed(self.all_steps()):
      try:
        r = self._read(step, abstract_state)
      except CheckpointError as e:
        self._reject(step, str(e))
        continue
      self.verified.add(step)
      return r
    return None

  def _reject(self, step: int, why: str) -> None:
    src = self.step_dir(step)
    dst = os.path.join(self.rejected_dir, str(step))
    n = 1
    while os.path.exists(dst):
      dst = os.path.join(self.rejected_dir, f"{step}.{n}")
      n += 1
    self.log(f"checkpoint step {step} ({src}) is skipped: {why}. It was moved to {dst} "
             "(kept for inspection, not deleted); trying the next older step.")
    _barrier(f"gemini_ckpt_reject_{step}_{n}")
    if self.is_main:
      os.makedirs(self.rejected_dir, exist_ok=True)
      shutil.move(src, dst)
    _barrier(f"gemini_ckpt_rejected_{step}_{n}")
    self.verified.discard(step)
    self._mngr.reload()

  def close(self) -> None:
    self.wait()
    self._mngr.close()


class _quiet_orbax:
  """Silences Orbax's and asyncio's loggers while a possibly damaged step is read (their
  per-thread tracebacks would bury the one paragraph CheckpointError gives)."""

  _NAMES = ("absl", "orbax", "asyncio", "tensorstore", "jax")

  def __enter__(self):
    self._levels = [(n, logging.getLogger(n).level) for n in self._NAMES]
    for n in self._NAMES:
      logging.getLogger(n).setLevel(logging.CRITICAL)

  def __exit__(self, *exc):
    for n, level in self._levels:
      logging.getLogger(n).setLevel(level)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# -- inference from a checkpoint alone ---------------------------------------------------

@dataclasses.dataclass
class InferenceModel:
  """What export, serving and evaluation need: config, f32 params, tokenizer."""
  cfg: Any                      # gemini.config.ModelConfig
  params: Any                   # numpy f32 pytree (the train state's "params")
  tokenizer_kind: str           # "sentencepiece" | "" (none recorded)
  tokenizer: bytes              # the tokenizer file's bytes (SentencePiece model proto)
  step: int
  directory: str

  def sentencepiece_model(self, override: str = "") -> bytes:
    """The SentencePiece model's bytes: the file `override` if given, else the recorded ones
    (CheckpointError when there are none)."""
    if override:
      with open(override, "rb") as f:
        return f.read()
    if self.tokenizer_kind != "sentencepiece" or not self.tokenizer:
      raise CheckpointError(f"{self.directory} step {self.step}: the checkpoint records no "
                            "tokenizer; give --tokenizer=PATH (the corpus' spm.model)")
    return self.tokenizer


def describe_model(cfg: Any, tokenizer_path: Optional[str] = None) -> Dict[str, Any]:
  """The `model` item of a checkpoint: the config and (if given) the tokenizer's bytes."""
  out: Dict[str, Any] = {"config": config_flags.config_to_dict(cfg)}
  if tokenizer_path:
    with open(tokenizer_path, "rb") as f:
      out["tokenizer"] = {"kind": "sentencepiece", "data": f.read(),
                          "file": os.path.basename(tokenizer_path)}
  return out


def checkpoint_dir(directory: str) -> str:
  """A training workdir or its checkpoints/ folder -> the checkpoints folder (must exist)."""
  directory = os.path.abspath(directory)
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
  return directory


def read_newest(directory: str, log=print) -> Restored:
  """The newest step of `directory` (a training workdir or its checkpoints/ folder) that
  reads and verifies, restored as saved (numpy); older steps are tried after a bad one.
  Nothing is created, moved or deleted."""
  directory = checkpoint_dir(directory)
  ckpt = Checkpointer(directory, keep=1 << 30, async_save=False, log=log, create=False)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"{directory}: no finished checkpoint step")
    for step in reversed(steps):
      try:
        r = ckpt._read(step, None)  # pylint: disable=protected-access
      except CheckpointError as e:
        log(f"checkpoint step {step} ({ckpt.step_dir(step)}) is skipped: {e}")
        continue
      r.state = _lists(r.state)
      return r
    raise CheckpointError(f"{directory}: no step reads and verifies (tried {steps})")
  finally:
    ckpt._mngr.close()  # pylint: disable=protected-access


def _lists(tree):
  """Orbax restores Python lists without a target as dicts keyed '0', '1', ...: undo that."""
  if isinstance(tree, dict):
    if tree and all(isinstance(k, str) and k.isdigit() for k in tree):
      return [_lists(tree[str(i)]) for i in range(len(tree))]
    return {k: _lists(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_lists(v) for v in tree]
  return tree


def load_for_inference(directory: str, cfg: Any = None, log=print) -> InferenceModel:
  """Config, params (numpy f32) and tokenizer of the newest intact step in `directory` (a
  training workdir or its checkpoints/ folder): the checkpoint describes itself. `cfg`
  replaces the recorded config (needed only for checkpoints that do not record one)."""
  r = read_newest(directory, log)
  where = os.path.join(checkpoint_dir(directory), str(r.step))
  if cfg is None:
    if "config" not in r.model:
      raise CheckpointError(f"{where}: the checkpoint does not record its model config "
                            "(written by an older version); give the config explicitly")
    cfg = config_flags.config_from_dict(r.model["config"], where=f"{where}/model/config")
  if not isinstance(r.state, dict) or "params" not in r.state:
    raise CheckpointError(f"{where}: state has no 'params'")
  tok = r.model.get("tokenizer") or {}
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), r.state["params"])
  return InferenceModel(cfg=cfg, params=params, tokenizer_kind=tok.get("kind", ""),
                        tokenizer=tok.get("data", b""), step=r.step,
                        directory=checkpoint_dir(directory))
