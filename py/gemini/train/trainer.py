"""The training loop: state placement on a mesh, steps, logging, checkpoints, resilience.

`Trainer` is what `main.py`, the demo, the benchmark and the end-to-end tests drive. It
needs a `ModelFns` (how to init, which loss, how to shard) and a loader with the
`gemini.data.loader.Loader` protocol: `next() -> {tokens, targets, segment_ids, positions}`
numpy [B, S] int32, `state() -> JSON-able`, `restore(state)`.

The loader returns a [B, S] host batch of which only the rows this process's devices hold
are read (`jax.make_array_from_callback`); `data_shards.DataShards` fills only those rows, so
each process reads only its share of the data. The in-memory replica and the SDC replay are
single-controller features (one process addresses all devices).

Guards: a non-finite loss or gradient norm stops the run (`DivergenceError`, nothing of that
step is kept or saved) or, with `on_divergence="rollback"`, restores the newest verified
checkpoint and skips the batches from there to the offending one (logged as a "rollback"
event). A loss more than `spike_zscore` standard deviations above the mean of the last
`spike_window` losses is reported as a spike (step line and metrics). Before the first step
the compiled step's memory analysis is compared with the device's memory (`memory.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gemini.train import checkpoint as ckpt_lib
from gemini.train import memory as memory_lib
from gemini.train import metrics as metrics_lib
from gemini.train.optimizer import lr_schedule, make_optimizer
from gemini.train.resilience import elastic
from gemini.train.resilience.goodput import GoodputMeter
from gemini.train.resilience.replicas import InMemoryReplica
from gemini.train.resilience.sdc import SDCChecker, SDCResult
from gemini.train.step import LossFn, apply_grads, init_state, make_train_step, step_rng
from gemini.train.train_config import TrainConfig
from gemini.train.tree_paths import path_names

BATCH_KEYS = ("tokens", "targets", "segment_ids", "positions")


@dataclasses.dataclass
class ModelFns:
  """What the trainer needs to know about a model."""
  init: Callable[[jax.Array], Any]                      # PRNG key -> f32 params pytree
  make_loss: Callable[[Optional[Mesh]], LossFn]         # mesh (None: no constraints) -> loss
  param_shardings: Callable[[Any, Mesh], Any]           # abstract params, mesh -> shardings
  batch_sharding: Callable[[Mesh, tuple], NamedSharding]  # mesh, [B, S] -> sharding
  flops_per_token: float                                # training FLOPs per token
  decay_mask: Any                                       # bools like params (or params -> bools)
  vocab_size: int = 0                                   # token ids must be < this (0: unchecked)


class DivergenceError(RuntimeError):
  """The loss or gradient norm became non-finite (nothing of that step was kept)."""


def state_shardings(abstract_state: Dict[str, Any], param_sh: Any, mesh: Mesh) -> Dict[str, Any]:
  """Shardings for the whole train state: optimizer moments follow the parameter whose
  path ends their path (same shape); everything else is replicated."""
  replicated = NamedSharding(mesh, P())
  by_path = {}
  for (path, sh), leaf in zip(jax.tree_util.tree_flatten_with_path(param_sh)[0],
                              jax.tree.leaves(abstract_state["params"])):
    by_path[path_names(path)] = (sh, leaf.shape)

  def for_opt(path, leaf):
    names = path_names(path)
    for i in range(len(names)):
      hit = by_path.get(names[i:])
      if hit is not None and hit[1] == leaf.shape:
        return hit[0]
    return replicated

  return {
      "step": replicated,
      "params": param_sh,
      "opt_state": jax.tree_util.tree_map_with_path(for_opt, abstract_state["opt_state"]),
      "rng": replicated,
  }


def use_compilation_cache(directory: str) -> None:
  """Persists XLA compilations in `directory`: a resumed or repeated run skips compiling
  programs it has compiled before (on this CPU a tiny model's step takes ~10-20 s to compile)."""
  if directory:
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def params_to_host(params: Any) -> Any:
  """Full numpy copy of (possibly multi-process sharded) params."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


def save_params_npz(params: Any, path: str) -> None:
  """Writes host params to an .npz keyed by their tree paths."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  np.savez(path, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})


def load_params_npz(path: str, abstract: Any, what: str = "") -> Any:
  """The tree of `abstract` (shapes, e.g. from jax.eval_shape) filled from an .npz of
  save_params_npz; names the file and the parameter that is missing or has another shape."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"npz params {path} do not exist")
  data = np.load(path)
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  leaves = []
  for p, want in flat:
    key = jax.tree_util.keystr(p)
    if key not in data:
      raise ValueError(f"{path}: missing parameter {key}{what}")
    if data[key].shape != want.shape:
      raise ValueError(f"{path}: parameter {key} has shape {data[key].shape}, not the "
                       f"{want.shape}{what}")
    leaves.append(data[key])
  return jax.tree_util.tree_unflatten(treedef, leaves)


class Trainer:
  """Drives training of `model` with `tc` on `mesh`, reading `loader`, writing `workdir`."""

  def __init__(self, model: ModelFns, tc: TrainConfig, mesh: Mesh, loader: Any,
               workdir: Optional[str] = None, *, peak_flops: Optional[float] = None,
               log: Callable[[str], None] = print, reference_loss: Optional[float] = None,
               describe: Optional[Dict[str, Any]] = None, check_memory: bool = True):
    self.model, self.tc, self.loader, self.workdir = model, tc, loader, workdir
    self.peak_flops = peak_flops
    self.reference_loss = reference_loss
    self.describe = describe          # Checkpoint's "model" item: config + tokenizer.
    self.check_memory = check_memory
    self.is_main = jax.process_index() == 0
    self.log = log if self.is_main else (lambda _: None)
    self.optimizer = make_optimizer(tc, model.decay_mask)
    self.schedule = lr_schedule(tc)
    self.metrics = metrics_lib.MetricsLog(
        os.path.join(workdir or ".", "metrics.jsonl"), enabled=bool(workdir) and self.is_main)
    self.ckpt = (ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), tc.keep_checkpoints,
                                       log=self.log)
                 if workdir and tc.checkpoint_every else None)
    single = jax.process_count() == 1
    if (tc.replica_every or tc.sdc_every) and not single:
      raise ValueError("replica_every / sdc_every need a single-controller run "
                       f"(process_count={jax.process_count()})")
    self.replica = InMemoryReplica() if tc.replica_every else None
    self.goodput = GoodputMeter()
    self.sdc_inject: Optional[Callable[[Any], Any]] = None   # Fault hook (tests).
    self.sdc_results = []
    self.state: Optional[Dict[str, Any]] = None
    self.step = 0
    self._mixture = None
    self._recent = []
    self._losses = []                 # Recent finite losses (spike detector's window).
    self._last_loss = float("nan")
    self.rollbacks = 0
    self.memory_estimate: Optional[memory_lib.Estimate] = None
    self._initial_loader_state = loader.state()   # For a disk recovery with no checkpoint.
    self._set_mesh(mesh)

  # -- placement -------------------------------------------------------------------------

  def _set_mesh(self, mesh: Mesh) -> None:
    self.mesh = mesh
    abstract_params = jax.eval_shape(self.model.init, jax.random.key(0))
    param_sh = self.model.param_shardings(abstract_params, mesh)
    abstract = jax.eval_shape(lambda p: init_state(p, self.optimizer, 0), abstract_params)
    self.state_shardings = state_shardings(abstract, param_sh, mesh)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, self.state_shardings)
    shape = (self.tc.batch_size, self.tc.seq_len)
    self.batch_shardings = {k: self.model.batch_sharding(mesh, shape) for k in BATCH_KEYS}
    step = make_train_step(self.model.make_loss(mesh), self.optimizer, self.schedule,
                           self.tc.grad_accum)
    self._step = jax.jit(step, in_shardings=(self.state_shardings, self.batch_shardings),
                         out_shardings=(self.state_shardings, None))
    self._compiled = None
    self._apply = jax.jit(lambda s, g: apply_grads(s, g, self.optimizer, self.schedule),
                          out_shardings=(self.state_shardings, None))
    self.sdc = (SDCChecker(self.model.make_loss(None), devices=list(mesh.devices.flat))
                if self.tc.sdc_every else None)
    self._fresh_compile = True

  def _init_fn(self):
    def init(key):
      return init_state(self.model.init(jax.random.fold_in(key, 1)), self.optimizer, self.tc.seed)
    return jax.jit(init, out_shardings=self.state_shardings)

  def init_or_restore(self) -> int:
    """Restores the newest complete checkpoint if there is one, else initialises. Returns
    the step training continues from."""
    restored = self.ckpt.restore_latest(self.abstract_state) if self.ckpt else None
    if restored is None:
      if self.ckpt and self.ckpt.rejected_dir and os.path.isdir(self.ckpt.rejected_dir):
        self.log(f"no intact checkpoint in {self.ckpt.directory}: starting from step 0")
      self.state = self._init_fn()(jax.random.key(self.tc.seed))
      self.step = 0
    else:
      self.state = restored.state
      self.loader.restore(restored.extra["loader"])
      self.step = restored.step
      self.log(f"resumed from checkpoint step {restored.step}")
    return self.step

  def global_batch(self, host: Dict[str, np.ndarray]) -> Dict[str, jax.Array]:
    """Global jax arrays from the (identical in every process) host batch."""
    out = {}
    for k in BATCH_KEYS:
      if k not in host:
        raise ValueError(f"loader batch lacks {k!r} (has {sorted(host)})")
      x = np.asarray(host[k])
      want = (self.tc.batch_size, self.tc.seq_len)
      if x.shape != want:
        raise ValueError(f"loader batch[{k!r}] has shape {x.shape}, expected {want}")
      vocab = self.model.vocab_size
      if vocab and k in ("tokens", "targets") and x.size and (x.max() >= vocab or x.min() < 0):
        bad = np.argwhere((x >= vocab) | (x < 0))[0]
        raise ValueError(f"loader batch {self.step + 1}: {k}[{bad[0]}, {bad[1]}] = "
                         f"{x[tuple(bad)]} is outside the model's vocabulary [0, {vocab})")
      out[k] = jax.make_array_from_callback(x.shape, self.batch_shardings[k],
                                            lambda idx, x=x: x[idx])
    return out

  # -- the loop --------------------------------------------------------------------------

  def run(self, until: Optional[int] = None,
          on_step: Optional[Callable[["Trainer"], None]] = None,
          stop: Optional[Callable[[], bool]] = None) -> None:
    """Trains until step `until` (default tc.steps); `on_step(trainer)` runs after each step.
    `stop()` returning True ends the run early (with a checkpoint of the current step)."""
    until = self.tc.steps if until is None else until
    if self.state is None:
      self.init_or_restore()
    if self.goodput._t0 is None:  # pylint: disable=protected-access
      self.goodput.start()
    while self.step < until:
      self.train_step()
      if self.ckpt:
        self.ckpt.poll()
      if on_step is not None:
        on_step(self)
      if stop is not None and self.step < until and stop():
        self.log(f"stopping early at step {self.step}")
        if self.ckpt:
          self.save_checkpoint()
        break
    if self.ckpt:
      self.ckpt.wait()

  def _mixture_event(self) -> None:
    weights = self.tc.mixture_at(self.step)
    if weights != self._mixture:
      self._mixture = weights
      self.metrics.write({"event": "mixture", "step": self.step, "weights": weights})
      self.log(f"step {self.step}: data mixture -> {weights}")

  def train_step(self) -> Dict[str, float]:
    """Reads one batch and applies one update (or refuses it on an SDC mismatch)."""
    self._mixture_event()
    t0 = time.perf_counter()
    batch = self.global_batch(self.loader.next())
    tc = self.tc
    if self.sdc is not None and (self.step + 1) % tc.sdc_every == 0:
      result = self.sdc.check(self.step, self.state["params"], batch, step_rng(self.state),
                              inject=self.sdc_inject)
      self.sdc_results.append(result)
      if not result.ok:
        self._sdc_alarm(result)
        return {}
      new_state, upd = self._apply(self.state, result.grads)
      metrics = dict(result.metrics, **upd)
    else:
      new_state, metrics = self._compiled_step(batch)(self.state, batch)
    scalars = {k: float(v) for k, v in metrics.items() if jnp.ndim(v) == 0}
    bad = {k: scalars[k] for k in ("loss", "grad_norm") if k in scalars
           and not np.isfinite(scalars[k])}
    if scalars.get("params_finite", 1.0) != 1.0:
      bad["updated_params"] = "non-finite"
    if bad:
      self._diverged(bad)
      return {}
    self.state = new_state
    dt = time.perf_counter() - t0
    self.step += 1
    self._last_loss = scalars.get("loss", float("nan"))
    self._spike(scalars)
    self.goodput.step_done(self.step, dt)
    self._record(scalars, dt)
    if self.replica is not None and self.step % tc.replica_every == 0:
      t1 = time.perf_counter()
      self.replica.refresh(self.state, self.step, {"loader": self.loader.state()})
      self.goodput.overhead("replica", time.perf_counter() - t1)
    if self.ckpt and (self.step % tc.checkpoint_every == 0 or self.step == tc.steps):
      t1 = time.perf_counter()
      self.save_checkpoint()
      self.goodput.overhead("checkpoint", time.perf_counter() - t1)
    return scalars

  def _compiled_step(self, batch):
    """The step compiled ahead of time; compile time is goodput overhead, not step time."""
    if self._compiled is None:
      t0 = time.perf_counter()
      abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
                        for k, v in batch.items()}
      compiled = self._step.lower(self.abstract_state, abstract_batch).compile()
      _barrier_after_compile(f"gemini_step_compiled_at_{self.step}")
      self.goodput.overhead("compile", time.perf_counter() - t0)
      if self.check_memory:
        self.memory_estimate = memory_lib.check(compiled, self.mesh, self.tc)
      self._compiled = compiled
    return self._compiled

  def _record(self, scalars: Dict[str, float], dt: float) -> None:
    tc = self.tc
    tokens_per_s = tc.tokens_per_step / dt
    mfu = (self.model.flops_per_token * tokens_per_s / self.peak_flops
           if self.peak_flops else 0.0)
    if not self._fresh_compile:
      self._recent = (self._recent + [dt])[-20:]
    self._fresh_compile = False
    avg = sum(self._recent) / len(self._recent) if self._recent else dt
    record = dict(scalars, step=self.step, step_time_s=dt, tokens_per_s=tokens_per_s, mfu=mfu)
    spike = scalars.get("spike_z")
    if self._mixture is not None:
      record["mixture"] = self._mixture
    self.metrics.write(record)
    if tc.log_every and (self.step % tc.log_every == 0 or self.step == 1
                         or self.step == tc.steps):
      avg_mfu = (self.model.flops_per_token * tc.tokens_per_step / avg / self.peak_flops
                 if self.peak_flops and self._recent else 0.0)
      self.log(metrics_lib.progress_line(self.step, tc.steps, scalars.get("loss", float("nan")),
                                         tc.tokens_per_step / avg, avg_mfu,
                                         avg * (tc.steps - self.step))
               + (f" | LOSS SPIKE z={spike:.1f}" if spike is not None else ""))
    elif spike is not None:
      self.log(f"step {self.step}: loss spike {scalars['loss']:.4f} (z={spike:.1f} over the last "
               f"{len(self._losses)} steps)")

  def save_checkpoint(self) -> None:
    """Saves the current state, unless any of it is non-finite (DivergenceError)."""
    if not bool(_all_finite(self.state)):
      raise DivergenceError(f"step {self.step}: the train state holds non-finite values; "
                            "refusing to checkpoint it (the newest checkpoint is kept)")
    self.ckpt.save(self.step, self.state,
                   {"loader": self.loader_state(), "step": self.step, "loss": self._last_loss
                    if np.isfinite(self._last_loss) else None},
                   self.describe)
    if self.is_main and self.workdir:
      metrics_lib.plot_loss(self.metrics.path, os.path.join(self.workdir, "loss.png"),
                            self.reference_loss)

  def loader_state(self) -> Any:
    """The loader's state; multi-process: every process's shard states merged."""
    state = self.loader.state()
    if jax.process_count() == 1:
      return state
    states = _allgather_json(state)
    if all(isinstance(s, dict) and "shards" in s for s in states):
      merged = dict(states[0], shards={})
      for s in states:
        merged["shards"].update(s["shards"])
      return merged
    return states[0]

  # -- guards ----------------------------------------------------------------------------

  def _spike(self, scalars: Dict[str, float]) -> None:
    """Adds "spike_z" to `scalars` when the loss is a spike against the recent window."""
    tc, loss = self.tc, scalars.get("loss")
    if not tc.spike_window or loss is None:
      return
    window = self._losses
    if len(window) >= max(8, tc.spike_window // 2):
      mean, std = float(np.mean(window)), float(np.std(window))
      z = (loss - mean) / max(std, 1e-6 * max(abs(mean), 1.0))
      if z > tc.spike_zscore:
        scalars["spike_z"] = z
        self.metrics.write({"event": "loss_spike", "step": self.step, "loss": loss, "z": z,
                            "window_mean": mean, "window_std": std})
        return   # A spike does not enter the baseline.
    self._losses = (window + [loss])[-tc.spike_window:]

  def _diverged(self, bad: Dict[str, float]) -> None:
    at = self.step + 1
    what = ", ".join(f"{k}={v}" for k, v in bad.items())
    self.metrics.write({"event": "divergence", "step": at,
                        **{k: str(v) for k, v in bad.items()}})
    rollback = self.tc.on_divergence == "rollback" and self.rollbacks < self.tc.max_rollbacks
    if not rollback:
      if self.ckpt:
        self.ckpt.wait()   # Pending saves of good steps finish (and verify) before stopping.
      hint = ("--on_divergence=rollback restores the last good checkpoint and skips these "
              "batches" if self.tc.on_divergence == "stop" else
              f"already rolled back {self.rollbacks} times (--max_rollbacks)")
      raise DivergenceError(
          f"training diverged at step {at}: {what} (lr {self.tc.lr:g}). The update was not "
          f"applied and nothing of it was saved; the newest checkpoint is step "
          f"{self.ckpt.latest_step() if self.ckpt else None}. {hint}; or lower --lr / "
          "raise --warmup_steps.")
    self.rollbacks += 1
    t0 = time.perf_counter()
    self.state = None
    restored = None
    if self.ckpt:
      restored = self.ckpt.restore_latest(self.abstract_state)
    if restored is None:
      self.state = self._init_fn()(jax.random.key(self.tc.seed))
      self._rewind(0, {"loader": self._initial_loader_state})
    else:
      self.state = restored.state
      self._rewind(restored.step, restored.extra)
    skipped = list(range(self.step + 1, at + 1))   # Batches of steps step+1 .. at.
    for _ in skipped:
      self.loader.next()
    self._losses = []
    self.metrics.write({"event": "rollback", "step": self.step, "at_step": at, "cause": what,
                        "skipped_batches": skipped})
    self.log(f"diverged at step {at} ({what}): rolled back to step {self.step} and skipped the "
             f"{len(skipped)} batches of steps {skipped[0]}..{skipped[-1]} "
             f"(rollback {self.rollbacks} of {self.tc.max_rollbacks})")
    self._failure(at - 1, "rollback", time.perf_counter() - t0)

  # -- resilience ------------------------------------------------------------------------

  def _sdc_alarm(self, result: SDCResult) -> None:
    self.metrics.write({"event": "sdc", "step": self.step, "faulty_devices": result.faulty_devices,
                        "mismatched_shards": result.mismatched_shards})
    self.log(f"SDC at step {self.step + 1}: gradient checksums differ on shards "
             f"{result.mismatched_shards}; faulty device(s) {result.faulty_devices}; "
             "update not applied")

  def _rewind(self, step: int, extra: Dict[str, Any]) -> None:
    self.loader.restore(extra["loader"])
    self.step = step
    self._fresh_compile = True

  def recover_from_memory(self, lost_devices: Iterable[int] = ()) -> int:
    """Simulated failure: the live state is lost; recover it from the in-memory replica
    (no disk). Returns the step training continues from."""
    at, t0 = self.step, time.perf_counter()
    self.state = None
    self.state = self.replica.recover(self.state_shardings, lost_devices)
    self._rewind(self.replica.step, self.replica.extra)
    jax.block_until_ready(self.state)
    self._failure(at, "memory", time.perf_counter() - t0)
    return self.step

  def recover_from_disk(self) -> int:
    """Simulated failure: the live state is lost; restore the newest checkpoint."""
    at, t0 = self.step, time.perf_counter()
    self.state = None
    restored = self.ckpt.restore_latest(self.abstract_state)
    if restored is None:
      self.state = self._init_fn()(jax.random.key(self.tc.seed))
      self._rewind(0, {"loader": self._initial_loader_state})
    else:
      self.state = restored.state
      self._rewind(restored.step, restored.extra)
    jax.block_until_ready(self.state)
    self._failure(at, "disk", time.perf_counter() - t0)
    return self.step

  def lose_devices(self, lost_devices: Iterable[int]) -> int:
    """Elasticity: devices are gone; continue on the surviving slices, resharding the
    state from the in-memory replica. Returns the step training continues from."""
    lost = sorted(set(lost_devices))
    at, t0 = self.step, time.perf_counter()
    primary = self.state if self.replica.step == self.step else None
    self._set_mesh(elastic.surviving_mesh(self.mesh, lost))
    self.state = self.replica.recover(self.state_shardings, lost, primary=primary)
    self._rewind(self.replica.step, self.replica.extra)
    jax.block_until_ready(self.state)
    self.metrics.write({"event": "elastic", "step": self.step, "lost_devices": lost,
                        "mesh": dict(self.mesh.shape)})
    self.log(f"lost devices {lost}: continuing on mesh {dict(self.mesh.shape)} from step "
             f"{self.step}")
    self._failure(at, "memory+elastic", time.perf_counter() - t0)
    return self.step

  def _failure(self, at: int, source: str, seconds: float) -> None:
    f = self.goodput.failure(at, self.step, source, seconds)
    self.metrics.write({"event": "failure", "step": self.step, "at_step": at, "source": source,
                        "recovery_s": seconds, "lost_s": f.lost_s})
    self.log(f"failure at step {at}: recovered from {source} to step {self.step} in "
             f"{seconds:.2f}s (lost {f.lost_s:.2f}s)")

  def close(self) -> None:
    if self.ckpt:
      self.ckpt.close()


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _allgather_json(x: Any) -> list:
  """Every process's JSON-able `x`, in process order."""
  data = np.frombuffer(json.dumps(x, sort_keys=True).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([data.size], np.int64))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes.reshape(-1)), -1)
  return [json.loads(bytes(r[:int(n)]).decode()) for r, n in zip(rows, sizes.reshape(-1))]


def _barrier_after_compile(name: str, timeout_s: int = 600) -> None:
  """Multi-host: wait until every process has compiled the step.

  Compile times differ between hosts (more so on a loaded machine), and the first collective
  of the step initialises the CPU collectives (gloo) context with a fixed 30 s deadline; a
  coordination-service barrier here keeps a slow compiler from tripping it.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  client = distributed.global_state.client
  if client is not None:
    client.wait_at_barrier(name, timeout_s * 1000)
