"""Mesh planner: enumerate meshes, compile the promising ones, rank by predicted step time.

For a config, a topology, a global batch and a sequence length:
  1. enumerate every mesh over (data, fsdp, tensor, expert, context) whose sizes multiply to
     the chip count and respect divisibility: data*fsdp*expert divides the batch (otherwise
     rows are replicated and work is duplicated), tensor divides the heads and the (expert)
     MLP width, expert divides num_experts (1 for dense models), context divides the
     sequence and is only used with ring attention;
  2. drop, without compiling, meshes whose sharded train state alone (f32 weights + two AdamW
     moments, exact from gemini.sharding's rules) exceeds the chip's HBM;
  3. order the rest by a coarse analytic step time (model FLOPs vs an estimate of the
     collective bytes each axis implies) and compile the first `max_compiles` (cached on
     disk, analyze.py), always including the naive all-`data` mesh for comparison;
  4. drop compiled meshes whose compiled per-device memory exceeds HBM and rank the rest by
     the compiled roofline step time (figures.estimate).
When nothing fits, the plan says so and by how much (the least memory-hungry mesh's bytes
against HBM).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
from typing import Dict, List, Optional

import jax

from gemini import family
from gemini.config import ModelConfig
from gemini.model import spec as spec_lib
from gemini.train.aot import analyze as an
from gemini.train.aot import hardware

AXES = ("data", "fsdp", "tensor", "expert", "context")


def _divisors(n: int) -> List[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_meshes(cfg: ModelConfig, chips: int, batch: int, seq: int,
                     attn_impl: str = "xla") -> List[Dict[str, int]]:
  """All valid meshes (dicts over AXES, product = chips), see the module docstring."""
  mlp = [cfg.d_ff] if cfg.num_moe_layers < cfg.n_layers else []
  if cfg.moe.enabled:
    mlp.append(cfg.moe.d_ff)
  out = []
  for sizes in itertools.product(_divisors(chips), repeat=len(AXES)):
    if math.prod(sizes) != chips:
      continue
    m = dict(zip(AXES, sizes))
    if batch % (m["data"] * m["fsdp"] * m["expert"]):
      continue
    if cfg.n_heads % m["tensor"] or any(f % m["tensor"] for f in mlp):
      continue
    if m["expert"] > 1 and (not cfg.moe.enabled or cfg.moe.num_experts % m["expert"]):
      continue
    if m["context"] > 1 and (attn_impl != "ring" or seq % m["context"]):
      continue
    out.append(m)
  return out


def _shards(spec, mesh: Dict[str, int]) -> int:
  n = 1
  for entry in spec:
    for ax in (entry if isinstance(entry, tuple) else (entry,)):
      if ax is not None:
        n *= mesh[ax]
  return n


def state_bytes_per_device(cfg: ModelConfig, params, mesh: Dict[str, int]) -> float:
  """Exact bytes per device of f32 params + AdamW mu + nu under gemini.sharding's rules."""
  fake = types.SimpleNamespace(shape=dict(mesh))
  specs = spec_lib.partition_specs(cfg, fake)
  total = 0.0
  for leaf, spec in zip(jax.tree.leaves(params), jax.tree.leaves(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))):
    total += math.prod(leaf.shape) * leaf.dtype.itemsize / _shards(spec, mesh)
  return 3.0 * total


def activation_bytes_per_device(cfg: ModelConfig, mesh: Dict[str, int], batch: int, seq: int,
                                attn_impl: str = "xla", remat: bool = False) -> float:
  """A rough count of what the backward pass keeps per device (no rematerialisation):
  per token and layer, bf16 residual/norm outputs (3D), q and attention output (2H Dh / t),
  k and v (2K Dh), the MLP's gate/up/product (3F / t, top-k experts for MoE), and for the
  XLA attention the f32 scores + bf16 probabilities over the whole key length; plus the f32
  logits and their gradient. With remat only each layer's bf16 input is kept, plus one
  layer's worth while it is recomputed. Only orders the meshes to compile; the compiler
  decides."""
  d, f, t, e, c = (mesh[a] for a in AXES)
  tokens = batch * seq / (d * f * e * c)
  hidden = cfg.moe.top_k * cfg.moe.d_ff if cfg.moe.enabled else cfg.d_ff
  per_token_layer = 2 * (3 * cfg.d_model + 2 * cfg.n_heads * cfg.head_dim / t
                         + 2 * cfg.n_kv_heads * cfg.head_dim + 3 * hidden / t)
  if attn_impl == "xla":
    per_token_layer += 6 * cfg.n_heads / t * seq
  kept = (cfg.n_layers * 2 * cfg.d_model + per_token_layer if remat
          else cfg.n_layers * per_token_layer)
  return tokens * (kept + 8 * cfg.vocab_size / t)


def analytic_seconds(cfg: ModelConfig, params, mesh: Dict[str, int], chip: hardware.Chip,
                     chips: int, batch: int, seq: int) -> float:
  """A coarse step time used only to choose which meshes to compile: max of model compute
  and the ICI time of the main collectives each axis implies (per device, ring algorithms):
  fsdp: gather bf16 weights twice (fwd, bwd) + reduce-scatter f32 grads; data: all-reduce
  f32 grads; tensor: 4 activation all-reduces per layer; expert: 4 token all-to-alls per MoE
  layer; context: pass K/V around the ring (3x for fwd + bwd)."""
  param_dev = state_bytes_per_device(cfg, params, mesh) / 3.0      # f32 bytes per device
  d, f, t, e, c = (mesh[a] for a in AXES)
  frac = lambda n: (n - 1) / n
  comm = 0.0
  comm += (2 * 0.5 + 1) * param_dev * (f - 1)                 # gathered pieces = f x local
  comm += 2 * param_dev * frac(d)
  tokens = batch * seq / (d * f * e * c)
  act = tokens * cfg.d_model * 2
  comm += cfg.n_layers * 4 * 2 * act * frac(t)
  comm += cfg.num_moe_layers * 4 * act * cfg.moe.top_k * frac(e)
  kv = tokens * 2 * cfg.n_kv_heads * cfg.head_dim * 2
  comm += cfg.n_layers * 3 * kv * (c - 1)
  compute = family.train_flops_per_token(cfg, seq) * batch * seq / chips / chip.peak_bf16_flops
  return max(compute, comm / chip.ici_bandwidth)


@dataclasses.dataclass
class Candidate:
  mesh: Dict[str, int]
  state_bytes: float                        # analytic per-device train state
  analytic_seconds: float
  activation_bytes: float = 0.0             # rough analytic estimate (ordering only)
  analysis: Optional[an.Analysis] = None
  status: str = ""                          # why it is (not) in the ranking


@dataclasses.dataclass
class Plan:
  config: str
  topology: str
  batch: int
  seq: int
  hbm_bytes: int
  candidates: List[Candidate]               # ranked: fitting by step time, then the rest

  @property
  def best(self) -> Optional[Candidate]:
    fit = [c for c in self.candidates if c.analysis and c.analysis.estimate().fits]
    return fit[0] if fit else None

  @property
  def closest(self) -> Candidate:
    """The compiled candidate needing the least memory (any candidate if none compiled)."""
    compiled = [c for c in self.candidates if c.analysis is not None]
    return min(compiled or self.candidates, key=_mem)

  @property
  def naive(self) -> Optional[Candidate]:
    for c in self.candidates:
      if c.mesh["data"] == math.prod(c.mesh.values()):
        return c
    return None

  def verdict(self) -> str:
    best = self.best
    if best is not None:
      e = best.analysis.estimate()
      return (f"best mesh {an.compile_step.format_mesh(best.mesh)}: "
              f"{best.analysis.figures.total_bytes / 2**30:.2f} GiB/chip of "
              f"{self.hbm_bytes / 2**30:.1f}, step {e.step_time * 1e3:.1f} ms, MFU {e.mfu:.1%}")
    c = self.closest
    need = _mem(c)
    return (f"NOTHING FITS among the compiled meshes: the least memory-hungry, "
            f"{an.compile_step.format_mesh(c.mesh)}, "
            f"needs {need / 2**30:.1f} GiB/chip, {(need - self.hbm_bytes) / 2**30:.1f} GiB over "
            f"the {self.hbm_bytes / 2**30:.1f} GiB HBM ({need / self.hbm_bytes:.2f}x)")


def _mem(c: Candidate) -> float:
  return c.analysis.figures.total_bytes if c.analysis else c.state_bytes


def plan(cfg: ModelConfig, topology: str, batch: int, seq: int, *, attn_impl: str = "xla",
         moe_impl: str = "xla", remat: bool = False, max_compiles: int = 4,
         cache_dir: Optional[str] = None,
         include_naive: bool = True, cache_only: bool = False, log=lambda s: None) -> Plan:
  """The ranked plan (see the module docstring)."""
  chip, _ = hardware.parse_topology(topology)
  chips = hardware.num_chips(topology)
  params = spec_lib.abstract_params(cfg)
  meshes = enumerate_meshes(cfg, chips, batch, seq, attn_impl)
  if not meshes:
    raise ValueError(f"no valid mesh for {cfg.name} on {topology} with batch={batch}, "
                     f"seq={seq}: batch must be divisible by some data*fsdp*expert split of "
                     f"{chips} chips")
  cands = [Candidate(m, state_bytes_per_device(cfg, params, m),
                     analytic_seconds(cfg, params, m, chip, chips, batch, seq),
                     activation_bytes_per_device(cfg, m, batch, seq, attn_impl, remat))
           for m in meshes]
  for c in cands:
    if c.state_bytes > chip.hbm_bytes:
      c.status = f"state alone {c.state_bytes / 2**30:.1f} GiB > HBM (not compiled)"
  # Meshes whose rough state + activation estimate fits come first, fastest first.
  # Equal times (compute-bound meshes all tie) go to the one estimated to need less memory.
  fitting = sorted([c for c in cands if not c.status],
                   key=lambda c: (c.state_bytes + c.activation_bytes > chip.hbm_bytes,
                                  c.analytic_seconds, c.state_bytes + c.activation_bytes))
  chosen = fitting[:max_compiles]
  if not chosen:   # Nothing can fit: compile the least memory-hungry to report by how much.
    chosen = sorted(cands, key=lambda c: c.state_bytes)[:1]
  naive = next((c for c in cands if c.mesh["data"] == chips), None)
  if include_naive and naive is not None and naive not in chosen:
    chosen.append(naive)
  for c in fitting[max_compiles:]:
    c.status = f"not compiled (analytic rank beyond --max_compiles={max_compiles})"
  for i, c in enumerate(chosen):
    log(f"[{i + 1}/{len(chosen)}] compiling {cfg.name} on {topology} mesh "
        f"{an.compile_step.format_mesh(c.mesh)} ...")
    c.analysis = an.analyze(cfg, topology, c.mesh, batch, seq, attn_impl=attn_impl,
                            moe_impl=moe_impl, remat=remat, cache_dir=cache_dir, cache_only=cache_only, log=log)
    e = c.analysis.estimate()
    c.status = ("fits" if e.fits else
                f"over HBM by {(c.analysis.figures.total_bytes - chip.hbm_bytes) / 2**30:.1f} GiB")
  def key(c):
    if c.analysis is None:
      return (2, c.analytic_seconds)
    e = c.analysis.estimate()
    return (0, e.step_time) if e.fits else (1, c.analysis.figures.total_bytes)
  return Plan(cfg.name, topology, batch, seq, chip.hbm_bytes, sorted(cands, key=key))
