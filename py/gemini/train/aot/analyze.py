"""One configuration, compiled and costed: the AOT harness behind `aot` and the planner.

`analyze(cfg, topology, mesh, batch, seq)` compiles the real train step (compile_step.py),
reads its per-device figures (figures.py) and estimates the step on the chip (hardware.py).
Results are cached on disk as JSON keyed by everything that shapes the program (config,
topology, mesh, batch, seq, kernels, compiled layer counts, jax and libtpu versions).

Deep models can be compiled with fewer layers: with `compile_layers=(l1, l2)` the step is
compiled at l1 and at l2 decoder layers and every figure is extrapolated linearly to the real
depth (figures.extrapolate_layers). This is exact for what grows per layer (weights, optimizer
state, saved activations, per-layer FLOPs and collectives) and keeps the rest once; it needs
every decoder layer to be the same kind (all dense or all MoE), and says so in `note`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import time
from typing import Dict, Optional, Tuple

import jax

from gemini import family
from gemini.config import ModelConfig
from gemini.train.aot import compile_step, figures as fig_lib, hardware

CACHE_VERSION = 5   # Bump when what a cached entry means changes (5: temporaries floor).


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
  compiled_layers: Tuple[int, ...]   # (n_layers,) when compiled whole, else (l1, l2)
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
  def extrapolated(self) -> bool:
    return self.compiled_layers != (self.n_layers,)

  @property
  def note(self) -> str:
    rm = "; per-layer rematerialisation" if self.remat else ""
    oom = ("; the compiler refused it as larger than HBM: memory is its stated need, FLOPs "
           "from the unpartitioned program" if self.figures.compiler_oom else "")
    if not self.extrapolated:
      return f"compiled all {self.n_layers} layers" + rm + oom
    l1, l2 = self.compiled_layers
    return (f"compiled {l1} and {l2} of {self.n_layers} layers; figures extrapolated linearly "
            f"(per-layer part x {self.n_layers})" + rm + oom)

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
    d["compiled_layers"] = tuple(d["compiled_layers"])
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
              attn_impl: str, moe_impl: str, compiled_layers: Tuple[int, ...],
              remat: bool = False) -> str:
  parts = [CACHE_VERSION, _versions(), repr(cfg), topology, sorted(mesh.items()), batch, seq,
           attn_impl, moe_impl, list(compiled_layers)]
  if remat:  # Appended only when set, so entries compiled before the option stay valid.
    parts.append("remat")
  if attn_impl != "xla" or moe_impl != "xla":
    parts.append("mosaic")   # Kernels compiled for the TPU (earlier entries interpreted them).
  blob = json.dumps(parts)
  return hashlib.sha256(blob.encode()).hexdigest()[:32]


def uniform_layers(cfg: ModelConfig) -> bool:
  """True if every decoder layer is the same kind (all dense or all MoE)."""
  return cfg.num_moe_layers in (0, cfg.n_layers)


def plan_layers(cfg: ModelConfig, compile_layers: Optional[Tuple[int, int]]) -> Tuple[int, ...]:
  """Layer counts to compile: (n_layers,) or the (l1, l2) pair when it is smaller and valid."""
  if compile_layers is None or compile_layers[1] >= cfg.n_layers:
    return (cfg.n_layers,)
  l1, l2 = compile_layers
  if not 1 <= l1 < l2:
    raise ValueError(f"compile_layers={compile_layers}: need 1 <= l1 < l2")
  if not uniform_layers(cfg):
    raise ValueError(f"config {cfg.name!r} mixes dense and MoE layers "
                     f"(moe.layers={cfg.moe.layers}); compile it whole (no --compile_layers)")
  return (l1, l2)


def _compile_figures(cfg, topology, mesh, batch, seq, attn_impl, moe_impl, remat):
  result = compile_step.compile_train_step(cfg, topology, mesh, batch, seq, attn_impl, moe_impl,
                                           remat)
  return fig_lib.from_compile(result, hardware.num_chips(topology)), result.shapes


class NotCached(LookupError):
  """Raised with cache_only=True when a configuration has not been compiled yet."""


def analyze(cfg: ModelConfig, topology: str, mesh: Dict[str, int], batch: int, seq: int, *,
            attn_impl: str = "xla", moe_impl: str = "xla", remat: bool = False,
            compile_layers: Optional[Tuple[int, int]] = None,
            cache_dir: Optional[str] = None, cache_only: bool = False,
            log=lambda s: None) -> Analysis:
  """Compiles (or loads from the cache) and returns the Analysis of one train step.

  cache_dir: None uses default_cache_dir(); "" disables the cache. cache_only: raise
  NotCached instead of compiling.
  """
  layers = plan_layers(cfg, compile_layers)
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  key = cache_key(cfg, topology, mesh, batch, seq, attn_impl, moe_impl, layers, remat)
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
  if len(layers) == 1:
    figs, shapes = _compile_figures(cfg, topology, mesh, batch, seq, attn_impl, moe_impl, remat)
    param_bytes, state_bytes = shapes.param_bytes, shapes.state_bytes
  else:
    l1, l2 = layers
    f1, s1 = _compile_figures(compile_step.with_layers(cfg, l1), topology, mesh, batch, seq,
                              attn_impl, moe_impl, remat)
    f2, s2 = _compile_figures(compile_step.with_layers(cfg, l2), topology, mesh, batch, seq,
                              attn_impl, moe_impl, remat)
    figs = fig_lib.extrapolate_layers(f1, l1, f2, l2, cfg.n_layers)
    t = (cfg.n_layers - l1) / (l2 - l1)
    param_bytes = s1.param_bytes + (s2.param_bytes - s1.param_bytes) * t
    state_bytes = s1.state_bytes + (s2.state_bytes - s1.state_bytes) * t
  result = Analysis(cfg.name, topology, dict(mesh), batch, seq, attn_impl, moe_impl,
                    cfg.n_layers, layers, figs, float(param_bytes), float(state_bytes),
                    time.perf_counter() - t0, family.train_flops_per_token(cfg, seq), remat)
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(result.to_json(), f, indent=1)
    os.replace(tmp, path)
  return result
