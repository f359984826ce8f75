"""Shared by the tasks: a jitted train loop with progress/JSONL/PNG, greedy multimodal decoding,
and the results folder.

    train(cfg, next_batch, steps, ...) -> params       next_batch(step) -> batch dict (NumPy)
      one optax AdamW step (gemini.train.optimizer) per batch on transformer.loss_fn; every
      log_every steps a progress line (rate, ETA) and a JSONL record; loss PNG at the end
    greedy_answers(params, cfg, batch, prompt_len, max_new, eos_id) -> [B, max_new] ids
      prefill of a (multimodal) prompt batch, then argmax decode steps
    small_decoder(cfg) -> cfg with the tasks' narrow decoder (--size=small)
    save_params(params, workdir) / load_params(path, cfg)
      the trained weights as workdir/params.npz (tree-path keys: `eval --model=npz:PATH`
      reads them too), so a task's evaluation can be rerun without training again
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig
from gemini.model import decode, spec, transformer
from gemini.train import metrics as metrics_lib
from gemini.train.optimizer import make_optimizer
from gemini.train.trainer import load_params_npz, save_params_npz
from gemini.train.train_config import TrainConfig


def small_decoder(cfg: ModelConfig, name: str) -> ModelConfig:
  """cfg's decoder narrowed to what a task's short answer needs: width 128 in 2 layers (two,
  so an induction circuit fits), cfg's heads at 32 dims each, MoE (cfg's experts, top-k) on
  layer 1 only; its encoders are kept."""
  moe = dataclasses.replace(cfg.moe, d_ff=256, layers=(1,))
  return cfg.replace(name=name, d_model=128, n_layers=2, head_dim=32, d_ff=512, moe=moe)


def task_parser(doc: str, name: str, *, steps: int, batch: int, lr: float,
                quick: Dict[str, int]) -> argparse.ArgumentParser:
  """The flags every task takes (--steps --batch --lr --quick --out --seed); `quick` is the
  short form's settings, applied by parse_task. The task adds its own flags."""
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--steps", type=int, default=steps)
  p.add_argument("--batch", type=int, default=batch)
  p.add_argument("--lr", type=float, default=lr)
  p.add_argument("--quick", action="store_true", help="CI short form: " +
                 ", ".join(f"--{k}={v}" for k, v in quick.items()))
  p.add_argument("--out", default="", help="results folder (default $GEMINI_RESULTS or "
                 f"/tmp/gemini-results)/{name}")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(quick_settings=quick)
  return p


def parse_task(p: argparse.ArgumentParser, argv) -> argparse.Namespace:
  """Parses argv (sys.argv[1:] when None), the short form's settings applied under --quick."""
  a = p.parse_args(sys.argv[1:] if argv is None else argv)
  if a.quick:
    for k, v in a.quick_settings.items():
      setattr(a, k, v)
  return a


def task_out(a: argparse.Namespace, name: str) -> str:
  """--out, or the results folder `name` (`name`_quick for the short form), created."""
  out = a.out or results_dir(name + ("_quick" if a.quick else ""))
  os.makedirs(out, exist_ok=True)
  return out


def results_dir(name: str, root: str = "") -> str:
  path = os.path.join(root or os.environ.get("GEMINI_RESULTS", "/tmp/gemini-results"), name)
  os.makedirs(path, exist_ok=True)
  return path


def train(cfg: ModelConfig, next_batch: Callable[[int], Dict[str, np.ndarray]], steps: int,
          workdir: str, *, lr: float = 2e-3, warmup: int = 50, seed: int = 0,
          log_every: int = 25, attn_impl: str = "xla", moe_impl: str = "tiled", mesh=None,
          log=print, params=None) -> dict:
  """Trains from init (or `params`) for `steps` steps; metrics in workdir/metrics.jsonl.
  MoE defaults to the tiled grouped matmul: XLA:CPU runs `ragged_dot` as a generic loop
  (train/README.md), and the state is donated so a step updates it in place."""
  tc = TrainConfig(steps=steps, lr=lr, warmup_steps=min(warmup, steps // 4 + 1),
                   weight_decay=0.05, checkpoint_every=0)
  opt = make_optimizer(tc, spec.decay_mask(cfg))
  params = transformer.init_params(cfg, jax.random.key(seed)) if params is None else params
  opt_state = opt.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step_fn(params, opt_state, batch):
    def loss(p):
      return transformer.loss_fn(p, batch, cfg, attn_impl=attn_impl, moe_impl=moe_impl,
                                 mesh=mesh)
    (l, m), g = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = opt.update(g, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params, opt_state, m

  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    os.remove(path)
  mlog = metrics_lib.MetricsLog(path)
  t0, seen, last = time.perf_counter(), 0, None
  for step in range(1, steps + 1):
    batch = next_batch(step)
    params, opt_state, m = step_fn(params, opt_state, batch)
    seen += int(np.sum(batch["segment_ids"] != 0))
    if step % log_every == 0 or step == steps:
      m = jax.device_get(m)
      dt = time.perf_counter() - t0
      rec = {"step": step, "loss": float(m["loss"]), "ce_loss": float(m["ce_loss"]),
             "accuracy": float(m["accuracy"]), "tokens_per_s": seen / dt, "seconds": dt}
      mlog.write(rec)
      eta = dt / step * (steps - step)
      log(metrics_lib.progress_line(step, steps, rec["loss"], rec["tokens_per_s"], 0.0, eta)
          + f" | token acc {rec['accuracy']:.3f}")
      last = rec
  metrics_lib.plot_loss(path, os.path.join(workdir, "loss.png"))
  return params


@functools.partial(jax.jit, static_argnames=("cfg", "max_new"))
def _greedy(params, batch, cfg: ModelConfig, max_new: int):
  b, s = batch["tokens"].shape
  cache = decode.init_cache(cfg, b, s + max_new)
  logits, cache = decode.prefill(params, batch, cache, cfg)
  tok = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

  def body(carry, _):
    tok, cache = carry
    logits, cache = decode.decode_step(params, tok, cache, cfg)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return (nxt, cache), tok

  _, toks = jax.lax.scan(body, (tok, cache), None, length=max_new)
  return toks.T                                            # [B, max_new]


def greedy_answers(params, cfg: ModelConfig, batch: Dict[str, np.ndarray], max_new: int
                   ) -> np.ndarray:
  """Greedy continuation of prompts that all end in the last column (left-aligned prompts
  of equal length). -> int32 [B, max_new]."""
  keys = [k for k in batch if k not in ("targets", "loss_mask")]
  return np.asarray(_greedy(params, {k: batch[k] for k in keys}, cfg, max_new))


def save_params(params, workdir: str) -> str:
  """Writes params (any placement) to workdir/params.npz -> its path."""
  path = os.path.join(workdir, "params.npz")
  save_params_npz(jax.device_get(params), path)
  return path


def load_params(path: str, cfg: ModelConfig) -> dict:
  """params.npz of save_params for `cfg`; names the file and the parameter that does not fit."""
  abstract = jax.eval_shape(lambda k: transformer.init_params(cfg, k), jax.random.key(0))
  return jax.tree.map(jnp.asarray, load_params_npz(path, abstract, f" for config {cfg.name!r}"))


def write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
