"""Sparse mixture-of-experts MLP: router top-k, capacity or dropless dispatch, expert FFNs.

    x [B,S,D] ─flatten─▶ [T,D] ─router (f32)─▶ expert_ids [T,k], gates [T,k]
      capacity: slot = expert * C + rank-in-expert; assignments past C are dropped (their
                expert output is 0; the residual around this layer carries the token)
                buffer [E,C,D] ─batched gated MLP─▶ [E,C,D] ─gather by slot─▶ [T,k,D]
      dropless: sort the T*k assignments by expert ─ragged_dot (grouped matmul)─▶ unsort
      tiled:    dropless, but each expert's assignments fill fixed-size row tiles
                (gemini.model.grouped_matmul): gather tokens into tiles [nt,tile,D] ─three
                batched dots, tile t with expert tile_group[t]'s weights─▶ gather back
      combine:  y[t] = sum_j gates[t,j] * FFN_{expert_ids[t,j]}(x[t])  ─▶ [B,S,D]

Each expert is the dense layer's gated MLP: down(act(x @ w_gate[e]) * (x @ w_up[e])). With one
expert and k=1 (softmax gate = 1, capacity >= T) the layer equals `mlp.gated_mlp` exactly.

Capacity: C = ceil(capacity_factor * T * k / E) per expert, T = B*S (the whole batch).
Priority when an expert overflows: all first choices before any second choice; within a
choice rank, flattened token order (b * S + s). Drops are counted per assignment.

impl (explicit; nothing is picked behind the caller's back):
  "xla"    capacity: the batched einsum above; dropless: `lax.ragged_dot` (XLA's grouped
           matmul: the TPU/GPU choice without Pallas; on XLA:CPU it is a slow generic loop)
  "tiled"  capacity as "xla"; dropless through `grouped_matmul` tiles: dense batched dots,
           the CPU choice (same results as "xla" up to f32 summation order)
  "pallas" hands the routed tokens to `pallas.moe.ops.moe_ffn` (grouped-matmul kernels,
           expert-parallel all-to-all under a mesh): the TPU choice
Routing, gates and losses are computed here in every case, so metrics mean the same thing.

Sharding (only when `mesh` is given): the capacity buffer [E,C,D] and expert weights carry
the logical axis 'experts' (mapped by gemini.sharding's RULES onto the mesh's 'expert' axis);
token activations stay ('batch', 'seq', 'act_embed').
"""

import math
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from pallas.moe import ops as pallas_moe_ops

from gemini import sharding
from gemini.config import ModelConfig
from gemini.model import grouped_matmul as gmm
from gemini.model import mlp as mlp_lib
from gemini.model import router as router_lib

IMPLS = ("xla", "tiled", "pallas")


def dense_as_moe(mlp_params: dict, d_model: int) -> dict:
  """A one-expert MoE whose output equals the dense gated MLP `mlp_params` (router [D,1] = 0)."""
  return {
      "router": jnp.zeros((d_model, 1), mlp_params["w_gate"].dtype),
      "w_gate": mlp_params["w_gate"][None],
      "w_up": mlp_params["w_up"][None],
      "w_down": mlp_params["w_down"][None],
  }


def capacity(num_tokens: int, cfg: ModelConfig) -> int:
  """Slots per expert in capacity mode: ceil(capacity_factor * T * k / E)."""
  m = cfg.moe
  return max(1, math.ceil(m.capacity_factor * num_tokens * m.top_k / m.num_experts))


def moe_mlp(params: dict, x: jax.Array, cfg: ModelConfig, *, impl: str = "xla",
            mesh: Optional[jax.sharding.Mesh] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """x [B,S,D] (compute dtype) -> (y [B,S,D] same dtype, metrics).

  metrics (f32 unless noted): 'aux_loss' [], 'z_loss' [], 'expert_load' [E] (fraction of the
  T*k assignments routed to each expert, before drops), 'drop_fraction' [] (dropped / (T*k)),
  'tokens_dropped' int32 [] (dropped assignments; 0 in dropless mode).
  """
  m = cfg.moe
  b, s, d = x.shape
  e = params["router"].shape[-1]
  if e != m.num_experts:
    raise ValueError(f"moe_mlp: params['router'] has {e} experts but cfg {cfg.name!r} has "
                     f"moe.num_experts={m.num_experts}")
  top_k = m.top_k
  xt = x.reshape(b * s, d)
  routing = router_lib.route(xt, params["router"], top_k, m.gate)
  load = router_lib.expert_fractions(routing.expert_ids, e)
  metrics = {
      "aux_loss": router_lib.load_balancing_loss(routing.probs, routing.expert_ids),
      "z_loss": router_lib.router_z_loss(routing.logits),
      "expert_load": load,
  }
  act = mlp_lib.activation(cfg.activation)
  if impl not in IMPLS:
    raise ValueError(f"moe_mlp: impl={impl!r}: expected one of {IMPLS}")
  if m.dispatch not in ("capacity", "dropless"):
    raise ValueError(f"moe_mlp: cfg.moe.dispatch={m.dispatch!r}: expected 'capacity' or 'dropless'")
  if impl == "pallas":
    y, dropped = _pallas_ffn(params, xt, routing, cfg, mesh, (b, s))
  elif m.dispatch == "capacity":
    y, dropped = _capacity_ffn(params, xt, routing, capacity(b * s, cfg), act, mesh)
  elif impl == "tiled":
    y, dropped = _tiled_ffn(params, xt, routing, act), jnp.zeros((), jnp.int32)
  else:
    y, dropped = _dropless_ffn(params, xt, routing, act), jnp.zeros((), jnp.int32)
  metrics["tokens_dropped"] = dropped
  metrics["drop_fraction"] = dropped.astype(jnp.float32) / routing.expert_ids.size
  y = y.reshape(b, s, d)
  if mesh is not None:
    y = sharding.constrain(y, ("batch", "seq", "act_embed"), mesh)
  return y, metrics


def _expert_ffn_batched(params: dict, h: jax.Array, act) -> jax.Array:
  """h [E,C,D] -> [E,C,D]: every expert's gated MLP on its own C rows."""
  dt = h.dtype
  g = jnp.einsum("ecd,edf->ecf", h, params["w_gate"].astype(dt))
  u = jnp.einsum("ecd,edf->ecf", h, params["w_up"].astype(dt))
  return jnp.einsum("ecf,efd->ecd", act(g) * u, params["w_down"].astype(dt))


def _capacity_ffn(params, xt, routing, cap, act, mesh):
  """Fixed-capacity dispatch. Returns (y [T,D], dropped assignments int32 [])."""
  t, d = xt.shape
  e = params["router"].shape[-1]
  k = routing.expert_ids.shape[1]
  # Rank-major order: every token's first choice claims a slot before any second choice.
  ids = routing.expert_ids.T.reshape(k * t)                          # [k*T]
  onehot = jax.nn.one_hot(ids, e, dtype=jnp.int32)                   # [k*T, E]
  rank = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)  # position within its expert
  keep = rank < cap
  trash = e * cap                                                    # one spare row for drops
  slot = jnp.where(keep, ids * cap + rank, trash)
  src = jnp.tile(xt, (k, 1))                                         # [k*T, D], rank-major
  buf = jnp.zeros((trash + 1, d), xt.dtype).at[slot].add(src)        # kept slots are unique
  h = buf[:trash].reshape(e, cap, d)
  if mesh is not None:
    h = sharding.constrain(h, ("experts", None, "act_embed"), mesh)
  out = _expert_ffn_batched(params, h, act)
  if mesh is not None:
    out = sharding.constrain(out, ("experts", None, "act_embed"), mesh)
  out = jnp.concatenate([out.reshape(trash, d), jnp.zeros((1, d), out.dtype)], axis=0)
  per_assign = out[slot].reshape(k, t, d)                            # dropped -> zero row
  gates = routing.gates.T.astype(xt.dtype)[:, :, None]               # [k, T, 1]
  y = jnp.sum(per_assign * gates, axis=0)
  return y, jnp.sum(~keep).astype(jnp.int32)


def _dropless_ffn(params, xt, routing, act):
  """Sort assignments by expert, grouped matmul with lax.ragged_dot, unsort. y [T,D]."""
  t, d = xt.shape
  e = params["router"].shape[-1]
  k = routing.expert_ids.shape[1]
  ids = routing.expert_ids.reshape(t * k)                            # token-major
  order = jnp.argsort(ids, stable=True)
  xs = xt[order // k]                                                # [T*k, D] sorted by expert
  sizes = jnp.bincount(ids, length=e).astype(jnp.int32)
  dt = xt.dtype
  g = jax.lax.ragged_dot(xs, params["w_gate"].astype(dt), sizes)
  u = jax.lax.ragged_dot(xs, params["w_up"].astype(dt), sizes)
  o = jax.lax.ragged_dot(act(g) * u, params["w_down"].astype(dt), sizes)
  unsorted = jnp.zeros_like(o).at[order].set(o)                      # order is a permutation
  gates = routing.gates.reshape(t * k, 1).astype(dt)
  return jnp.sum((unsorted * gates).reshape(t, k, d), axis=1)


def _tiled_ffn(params, xt, routing, act, tile=None):
  """Dropless FFN in tile layout (gemini.model.grouped_matmul). y [T,D]."""
  t, d = xt.shape
  e = params["router"].shape[-1]
  k = routing.expert_ids.shape[1]
  a = t * k                                                         # assignments, token-major
  tile = tile or gmm.choose_tile(a, e)
  p = gmm.plan(routing.expert_ids.reshape(a), e, tile)
  token_of_slot = jnp.where(p.row_of_slot < a, p.row_of_slot // k, t)  # padding reads row T (0)
  xs = gmm.take_rows(xt, token_of_slot, p.slot_of_row.reshape(t, k))
  xs = xs.reshape(p.num_tiles, tile, d)
  dt = xt.dtype
  g = gmm.tiled_dot(xs, params["w_gate"], p.tile_group)             # Weights cast inside.
  u = gmm.tiled_dot(xs, params["w_up"], p.tile_group)
  o = gmm.tiled_dot(act(g) * u, params["w_down"], p.tile_group)
  per_assign = gmm.take_rows(o.reshape(p.num_tiles * tile, d), p.slot_of_row,
                             p.row_of_slot[:, None])                 # [T*k, D]
  gates = routing.gates.reshape(t, k, 1).astype(dt)
  return jnp.sum(per_assign.reshape(t, k, d) * gates, axis=1)


def _token_axes(bs: Tuple[int, int], mesh) -> Tuple[str, ...]:
  """Mesh axes of the flattened [B*S] tokens in the order x [B,S,D] is already split (batch
  axes, then seq's), then the axes x is replicated over: shard_map then slices locally
  instead of resharding every token into mesh-axis order on each MoE layer."""
  spec = sharding.logical_to_spec(("batch", "seq"), bs, mesh)
  used = [a for e in spec if e for a in ((e,) if isinstance(e, str) else e)]
  return tuple(used) + tuple(a for a in mesh.axis_names if a not in used)


def _pallas_ffn(params, xt, routing, cfg, mesh, bs):
  """The Pallas grouped-matmul / expert-parallel path (pallas/moe/README.md)."""
  y, pm = pallas_moe_ops.moe_ffn(
      xt, routing.expert_ids, routing.gates, params["w_gate"], params["w_up"],
      params["w_down"], activation=cfg.activation, mesh=mesh, mode=cfg.moe.dispatch,
      capacity_factor=cfg.moe.capacity_factor,
      token_axes=None if mesh is None else _token_axes(bs, mesh),
      interpret=sharding.kernel_interpret(mesh))
  return y.astype(xt.dtype), jnp.asarray(pm["tokens_dropped"], jnp.int32)

