"""One configuration, compiled and costed: the AOT harness behind `aot` and the planner.

`analyze(cfg, topology, mesh, batch, seq)` compiles the real train step (compile_step.py),
reads its per-device figures (figures.py) and estimates the step on the chip (hardware.py).
Results are cached on disk as JSON keyed by everything that shapes the program (config,
topology, mesh, batch, seq, kernels, jax and libtpu versions).

The whole model is compiled, its decoder a `lax.scan` over the stacked blocks of layers, so
compile time and program size do not grow with depth. XLA's cost analysis counts the scan's
body once; the step is therefore compiled twice, with one and with two blocks per iteration,
and the FLOPs and bytes of every iteration are recovered from the difference
(figures.count_every_iteration). Memory is the real program's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import time
from typing import Dict, Optional

import jax

from gemini import family
from gemini.config import ModelConfig
from gemini.model import spec
from gemini.train.aot import compile_step, figures as fig_lib, hardware

CACHE_VERSION = 6   # Bump when what a cached entry means changes (6: whole scanned models).


def default_cache_dir() -> str:
  return os.environ.get("GEMINI_AOT_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "gemini_aot"))


@dataclasses.dataclass
class Analysis:
  """Everything known about one (config, topology, mesh, batch, seq) train step."""
  config: str
  topology: str
  mesh: Dict[str, int]
  batch: int
  seq: int
  attn_impl: str
  moe_impl: str
  n_layers: int
  layer_trips: int                    # iterations of the layer scan (blocks of layers)
  figures: fig_lib.StepFigures
  param_bytes: float                  # f32 master weights, whole model
  state_bytes: float                  # params + AdamW moments + step/rng, whole model
  compile_seconds: float
  model_flops_per_token: float
  remat: bool = False                 # decoder layers recomputed in the backward pass
  cached: bool = False

  @property
  def chips(self) -> int:
    return hardware.num_chips(self.topology)

  @property
  def chip(self) -> hardware.Chip:
    return hardware.parse_topology(self.topology)[0]

  @property
  def tokens_per_step(self) -> int:
    return self.batch * self.seq

  @property
  def note(self) -> str:
    rm = "; per-layer rematerialisation" if self.remat else ""
    if self.figures.compiler_oom:
      cost = ("; the compiler refused it as larger than HBM: memory is its stated need, FLOPs "
              "and bytes n/a")
    elif not self.figures.flops and self.layer_trips > 1:
      cost = "; FLOPs and bytes n/a: the compile with two blocks per iteration exceeds HBM"
    else:
      cost = ""
    return (f"compiled all {self.n_layers} layers (a scan of {self.layer_trips} blocks, "
            f"FLOPs and bytes counted over every iteration)" + rm + cost)

  def estimate(self) -> fig_lib.Estimate:
    return fig_lib.estimate(self.figures, self.chip, self.chips, self.tokens_per_step,
                            self.model_flops_per_token)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["figures"] = self.figures.to_json()
    d.pop("cached")
    return d

  @classmethod
  def from_json(cls, d: dict) -> "Analysis":
    d = dict(d)
    d["figures"] = fig_lib.StepFigures.from_json(d["figures"])
    return cls(**d, cached=True)


def _versions() -> str:
  out = [jax.__version__]
  for pkg in ("jaxlib", "libtpu"):
    try:
      out.append(importlib.metadata.version(pkg))
    except importlib.metadata.PackageNotFoundError:
      out.append("-")
  return "/".join(out)


def cache_key(cfg: ModelConfig, topology: str, mesh: Dict[str, int], batch: int, seq: int,
              attn_impl: str, moe_impl: str, remat: bool = False) -> str:
  parts = [CACHE_VERSION, _versions(), repr(cfg), topology, sorted(mesh.items()), batch, seq,
           attn_impl, moe_impl]
  if remat:  # Appended only when set, so entries compiled before the option stay valid.
    parts.append("remat")
  if attn_impl != "xla" or moe_impl != "xla":
    parts.append("mosaic")   # Kernels compiled for the TPU (earlier entries interpreted them).
  blob = json.dumps(parts)
  return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _compile_figures(cfg, topology, mesh, batch, seq, attn_impl, moe_impl, remat):
  """(figures with every scan iteration counted, StepShapes) of the whole model's step."""
  chips = hardware.num_chips(topology)
  trips = spec.repeats(cfg)
  rolled = compile_step.compile_train_step(cfg, topology, mesh, batch, seq, attn_impl,
                                           moe_impl, remat, unroll=1)
  figs = fig_lib.from_compile(rolled, chips)
  if trips == 1:
    return figs, rolled.shapes
  unrolled = compile_step.compile_train_step(cfg, topology, mesh, batch, seq, attn_impl,
                                             moe_impl, remat, unroll=2)
  return (fig_lib.count_every_iteration(figs, fig_lib.from_compile(unrolled, chips), trips),
          rolled.shapes)


class NotCached(LookupError):
  """Raised with cache_only=True when a configuration has not been compiled yet."""


def analyze(cfg: ModelConfig, topology: str, mesh: Dict[str, int], batch: int, seq: int, *,
            attn_impl: str = "xla", moe_impl: str = "xla", remat: bool = False,
            cache_dir: Optional[str] = None, cache_only: bool = False,
            log=lambda s: None) -> Analysis:
  """Compiles (or loads from the cache) and returns the Analysis of one train step.

  cache_dir: None uses default_cache_dir(); "" disables the cache. cache_only: raise
  NotCached instead of compiling.
  """
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  key = cache_key(cfg, topology, mesh, batch, seq, attn_impl, moe_impl, remat)
  path = os.path.join(cache_dir, key + ".json") if cache_dir else ""
  if path and os.path.exists(path):
    try:
      with open(path) as f:
        return Analysis.from_json(json.load(f))
    except (ValueError, KeyError, TypeError) as e:
      log(f"ignoring unreadable cache entry {path}: {e}")
  if cache_only:
    raise NotCached(f"{cfg.name} on {topology} mesh {compile_step.format_mesh(mesh)} "
                    f"batch {batch} seq {seq}: not compiled yet")
  t0 = time.perf_counter()
  figs, shapes = _compile_figures(cfg, topology, mesh, batch, seq, attn_impl, moe_impl, remat)
  result = Analysis(cfg.name, topology, dict(mesh), batch, seq, attn_impl, moe_impl,
                    cfg.n_layers, spec.repeats(cfg), figs, float(shapes.param_bytes),
                    float(shapes.state_bytes), time.perf_counter() - t0,
                    family.train_flops_per_token(cfg, seq), remat)
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(result.to_json(), f, indent=1)
    os.replace(tmp, path)
  return result
