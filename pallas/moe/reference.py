"""Pure-JAX references for the MoE kernels (independent of the Pallas code).

- `gmm_ref` / `tgmm_ref`: `jax.lax.ragged_dot` and a masked einsum.
- `moe_ffn_dense`: the whole MoE FFN as a dense one-hot einsum over every expert
  (no sorting, no exchange), with the same capacity drop rule as `ops.moe_ffn`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def activation_fn(name: str):
  """The gated MLP's activations: gelu (tanh approximation) or silu."""
  if name == "gelu":
    return lambda h: jax.nn.gelu(h, approximate=True)
  if name == "silu":
    return jax.nn.silu
  raise ValueError(f"activation={name!r}: expected 'gelu' or 'silu'")


def gmm_ref(lhs, rhs, group_sizes, preferred_dtype=None):
  """[m,k] x [e,k,n] -> [m,n] via lax.ragged_dot; rows past sum(group_sizes) -> 0."""
  return jax.lax.ragged_dot(lhs, rhs, group_sizes.astype(jnp.int32),
                            preferred_element_type=preferred_dtype or lhs.dtype)


def group_ids_of_rows(group_sizes, m):
  """int32 [m]: group of each sorted row; rows past the sum get id e (no group)."""
  ends = jnp.cumsum(group_sizes)
  return jnp.searchsorted(ends, jnp.arange(m), side="right").astype(jnp.int32)


def tgmm_ref(lhs, rhs, group_sizes, preferred_dtype=None):
  """[m,k], [m,n] -> [e,k,n]: out[g] = lhs_g^T rhs_g, as a one-hot einsum in f32."""
  e = group_sizes.shape[0]
  onehot = jax.nn.one_hot(group_ids_of_rows(group_sizes, lhs.shape[0]), e, dtype=jnp.float32)
  out = jnp.einsum("me,mk,mn->ekn", onehot, lhs.astype(jnp.float32), rhs.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.astype(preferred_dtype or lhs.dtype)


def capacity(tokens_per_group: int, k: int, num_experts: int, capacity_factor: float) -> int:
  """Slots per expert per token group: ceil(capacity_factor * tokens * k / E), >= 1."""
  return max(1, math.ceil(capacity_factor * tokens_per_group * k / num_experts))


def capacity_keep(expert_ids, num_experts: int, capacity_factor: float, groups: int = 1):
  """Capacity drop rule. bool [T,k]: True where the assignment fits.

  Tokens are split into `groups` contiguous groups (one per token shard); inside a group,
  priority is slot-major: every token's 1st choice, in token order, before any 2nd choice.
  An assignment is kept if fewer than C earlier assignments in its group chose its expert.
  """
  t, k = expert_ids.shape
  if t % groups:
    raise ValueError(f"capacity_keep: T={t} not divisible by groups={groups}")
  tg = t // groups
  c = capacity(tg, k, num_experts, capacity_factor)
  ids = expert_ids.reshape(groups, tg, k).transpose(0, 2, 1).reshape(groups, k * tg)
  onehot = jax.nn.one_hot(ids, num_experts, dtype=jnp.int32)           # [G, k*tg, E]
  pos = jnp.sum((jnp.cumsum(onehot, axis=1) - 1) * onehot, axis=-1)    # [G, k*tg]
  keep = pos < c
  return keep.reshape(groups, k, tg).transpose(0, 2, 1).reshape(t, k)


def moe_ffn_dense(x, expert_ids, gates, w_gate, w_up, w_down, *, activation="gelu",
                  mode="dropless", capacity_factor=1.25, capacity_groups=1):
  """Dense one-hot MoE reference. x [T,D]; expert_ids int32 [T,k]; gates [T,k];
  w_gate/w_up [E,D,F]; w_down [E,F,D]. Returns y [T,D] (x.dtype). Every expert runs on
  every token (f32 math), then a one-hot combine picks the routed ones."""
  e = w_gate.shape[0]
  act = activation_fn(activation)
  gates = gates.astype(jnp.float32)
  if mode == "capacity":
    gates = jnp.where(capacity_keep(expert_ids, e, capacity_factor, capacity_groups), gates, 0.0)
  elif mode != "dropless":
    raise ValueError(f"mode={mode!r}: expected 'dropless' or 'capacity'")
  combine = jnp.einsum("tk,tke->te", gates, jax.nn.one_hot(expert_ids, e, dtype=jnp.float32))
  hp = jax.lax.Precision.HIGHEST
  xf = x.astype(jnp.float32)
  h = act(jnp.einsum("td,edf->tef", xf, w_gate.astype(jnp.float32), precision=hp)) * \
      jnp.einsum("td,edf->tef", xf, w_up.astype(jnp.float32), precision=hp)
  out = jnp.einsum("tef,efd->ted", h, w_down.astype(jnp.float32), precision=hp)
  return jnp.einsum("te,ted->td", combine, out, precision=hp).astype(x.dtype)
