"""The train step, split into its two phases: gradients, then the update.

Train state (a plain dict pytree, f32 master weights):
    step      int32 []          updates applied so far
    params    model pytree      f32 master weights (the model casts to cfg.dtype for compute)
    opt_state optax pytree      f32 AdamW moments
    rng       uint32 [2]        raw PRNG key data, advanced once per step (checkpointed)

A `loss_fn(params, batch, rng) -> (loss f32 [], metrics {name: f32 []})` closes over the
model config, kernels and mesh. Batches are dicts of [B, S] arrays (see the team brief).
Splitting gradients from the update lets the SDC checker compare gradients from two device
assignments before anything is applied.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[Any, Dict[str, jax.Array], jax.Array], Tuple[jax.Array, Dict[str, jax.Array]]]


def init_state(params: Any, optimizer: optax.GradientTransformation, seed: int) -> Dict[str, Any]:
  """A fresh train state for f32 `params`."""
  return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": optimizer.init(params),
      "rng": jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32),
  }


def step_rng(state: Dict[str, Any]) -> jax.Array:
  """The PRNG key this step's computation may use (a fold of the state's key and step)."""
  return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def _microbatches(batch: Dict[str, jax.Array], accum: int) -> Dict[str, jax.Array]:
  """[B, ...] -> [accum, B/accum, ...] taking every accum-th row, so each microbatch keeps
  rows from every data shard (no resharding when the batch is sharded on its first axis)."""
  def split(x):
    b = x.shape[0]
    return jnp.swapaxes(x.reshape((b // accum, accum) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def grads_and_metrics(loss_fn: LossFn, params: Any, batch: Dict[str, jax.Array], rng: jax.Array,
                      accum: int = 1) -> Tuple[Any, Dict[str, jax.Array]]:
  """Mean gradient over `accum` microbatches (f32, shaped like params) and mean metrics."""
  vg = jax.value_and_grad(loss_fn, has_aux=True)
  if accum == 1:
    (loss, metrics), grads = vg(params, batch, rng)
    return grads, dict(metrics, loss=loss)

  def body(carry, xs):
    micro, i = xs
    (loss, metrics), grads = vg(params, micro, jax.random.fold_in(rng, i))
    acc_g, acc_m = carry
    acc_g = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc_g, grads)
    acc_m = jax.tree.map(jnp.add, acc_m, dict(metrics, loss=loss))
    return (acc_g, acc_m), None

  zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  micro = _microbatches(batch, accum)
  first = jax.tree.map(lambda x: x[0], micro)
  _, m_shape = jax.eval_shape(loss_fn, params, first, rng)
  zeros_m = {k: jnp.zeros((), jnp.float32) for k in list(m_shape) + ["loss"]}
  (g, m), _ = jax.lax.scan(body, (zeros_g, zeros_m), (micro, jnp.arange(accum)))
  scale = 1.0 / accum
  return jax.tree.map(lambda x: x * scale, g), jax.tree.map(lambda x: x * scale, m)


def apply_grads(state: Dict[str, Any], grads: Any, optimizer: optax.GradientTransformation,
                schedule: optax.Schedule) -> Tuple[Dict[str, Any], Dict[str, jax.Array]]:
  """One optimizer update; returns the new state and {grad_norm, lr, params_finite} (1.0 if
  every updated parameter is finite, else 0.0: the trainer's divergence guard reads it)."""
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
  # sum(p * 0) is 0 exactly when every element is finite (inf * 0 and nan are nan): one fused
  # multiply-add pass per leaf, where all(isfinite) ran as a slower boolean reduce-window.
  finite = jnp.isfinite(sum(jnp.sum(p * 0.0) for p in jax.tree.leaves(params)))
  return new, {"grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"]),
               "params_finite": finite.astype(jnp.float32)}


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, accum: int = 1):
  """Returns step(state, batch) -> (state, metrics), un-jitted (the caller jits with shardings)."""
  def step(state, batch):
    grads, metrics = grads_and_metrics(loss_fn, state["params"], batch, step_rng(state), accum)
    new, upd = apply_grads(state, grads, optimizer, schedule)
    return new, dict(metrics, **upd)
  return step
