"""Write and read `.gnb` files (the int4 Nano format documented in FORMAT.md beside this)."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Dict, List, Optional, Sequence

import jax
import numpy as np

from csrc.runtime import _gnb
from gemini import crc32c as crc_lib
from gemini.config import ModelConfig
from gemini.model import spec
from gemini.quant.int4 import Int4Weight, int4_values

MAGIC = b"GEMINANO"
VERSION = 1
ALIGN = 64
PREFIX = struct.Struct("<8sIIQIIQII")  # magic, version, header_bytes, file_bytes, config_bytes,
                                       # tokenizer_kind, tokenizer_bytes, n_tensors, reserved
F32, F16, BF16, INT4_F16, INT4_BF16 = 0, 1, 2, 3, 4
DTYPE_NAMES = {F32: "f32", F16: "f16", BF16: "bf16", INT4_F16: "int4/f16", INT4_BF16: "int4/bf16"}
TOK_NONE, TOK_SENTENCEPIECE, TOK_BPE = 0, 1, 2


@dataclasses.dataclass
class Tensor:
  """One table entry: name, dtype code, shape ([N, K] for int4), group size, raw data bytes."""
  name: str
  dtype: int
  shape: tuple
  group_size: int
  data: bytes


@dataclasses.dataclass
class GnbFile:
  config: dict
  tokenizer_kind: int
  tokenizer: bytes
  tensors: Dict[str, Tensor]


def _align(n: int) -> int:
  return -(-n // ALIGN) * ALIGN


def f32_tensor(name: str, x) -> Tensor:
  a = np.ascontiguousarray(np.asarray(x, np.float32))
  return Tensor(name, F32, a.shape, 0, a.tobytes())


def int4_rows(q: np.ndarray, group_size: int) -> np.ndarray:
  """int values q[N, K] in [-8, 7] -> packed uint8 [N, Kp/2] in the file's 32-block layout."""
  n, k = q.shape
  kp = -(-k // group_size) * group_size
  qp = np.zeros((n, kp), np.int16)
  qp[:, :k] = q
  blocks = (qp + 8).astype(np.uint8).reshape(n, kp // 32, 2, 16)
  return (blocks[:, :, 0, :] | (blocks[:, :, 1, :] << 4)).reshape(n, kp // 2)


def int4_tensor(name: str, w: Int4Weight) -> Tensor:
  """An Int4Weight for x[K] @ W[K, N] -> the file's row-major [N, K] int4 tensor."""
  q = int4_values(w).T                                      # [N, K]
  g = w.group_size
  groups = -(-w.k // g)
  scales = np.asarray(w.scales)[:groups].T                 # [N, Kp/g]
  code = INT4_F16 if scales.dtype == np.float16 else INT4_BF16
  data = int4_rows(q, g).tobytes() + np.ascontiguousarray(scales).view(np.uint16).tobytes()
  return Tensor(name, code, (w.n, w.k), g, data)


def model_tensors(qparams: dict, cfg: ModelConfig) -> List[Tensor]:
  """The tensors of an int4 params tree (`gemini.quant.params.quantize_params`), in the order
  and with the names gemini.model.spec gives (FORMAT.md): Int4Weight leaves as int4, the
  rest as f32; a stacked leaf contributes one tensor per decoder layer."""
  out = []
  for name, p, index in spec.decoder_exports(cfg):
    leaf = spec.get(qparams, p.path)
    if index:
      leaf = jax.tree.map(lambda a: a[index], leaf)
    out.append(int4_tensor(name, leaf) if isinstance(leaf, Int4Weight) else f32_tensor(name, leaf))
  return out


def config_dict(cfg: ModelConfig, group_size: int, *, bos_id: int = -1, eos_id: int = -1,
                add_bos: bool = False, chat_template: str = "") -> dict:
  """The config JSON object of FORMAT.md."""
  return {"name": cfg.name, "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
          "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
          "head_dim": cfg.head_dim, "d_ff": cfg.d_ff, "max_seq_len": cfg.max_seq_len,
          "rope_base": float(cfg.rope_base), "norm_eps": float(cfg.norm_eps),
          "logit_softcap": float(cfg.logit_softcap), "tie_embeddings": bool(cfg.tie_embeddings),
          "activation": cfg.activation, "group_size": group_size, "bos_id": bos_id,
          "eos_id": eos_id, "add_bos": add_bos, "chat_template": chat_template,
          # Optional key (absent = false), so files without it stay byte-identical.
          **({"qk_norm": True} if cfg.qk_norm else {})}


_DECODER_KEYS = ("name", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                 "head_dim", "d_ff", "max_seq_len", "rope_base", "norm_eps", "logit_softcap",
                 "tie_embeddings", "activation")


def model_config(config: dict) -> ModelConfig:
  """The dense decoder ModelConfig a file's config JSON describes (inverse of config_dict)."""
  return ModelConfig(**{k: config[k] for k in _DECODER_KEYS},
                     qk_norm=bool(config.get("qk_norm", False)))


def _entry(t: Tensor, offset: int) -> bytes:
  name = t.name.encode()
  return (struct.pack("<H", len(name)) + name + struct.pack("<BBI", t.dtype, len(t.shape), t.group_size)
          + struct.pack(f"<{len(t.shape)}Q", *t.shape)
          + struct.pack("<QQI", offset, len(t.data), crc_lib.crc32c(t.data)))


def encode(config: dict, tokenizer_kind: int, tokenizer: bytes, tensors: Sequence[Tensor]) -> bytes:
  """The whole file as bytes."""
  cfg_bytes = json.dumps(config, sort_keys=True).encode()
  # Entry sizes do not depend on offsets: 2 + name + 6 + 8*ndim + 20 bytes.
  table_len = sum(28 + len(t.name.encode()) + 8 * len(t.shape) for t in tensors)
  header_bytes = PREFIX.size + len(cfg_bytes) + len(tokenizer) + table_len + 4
  offsets, pos = [], _align(header_bytes)
  for t in tensors:
    offsets.append(pos)
    pos = _align(pos + len(t.data))
  file_bytes = offsets[-1] + len(tensors[-1].data) if tensors else _align(header_bytes)
  head = (PREFIX.pack(MAGIC, VERSION, header_bytes, file_bytes, len(cfg_bytes), tokenizer_kind,
                      len(tokenizer), len(tensors), 0)
          + cfg_bytes + tokenizer + b"".join(_entry(t, o) for t, o in zip(tensors, offsets)))
  head += struct.pack("<I", crc_lib.crc32c(head))
  out = bytearray(file_bytes)
  out[:len(head)] = head
  for t, o in zip(tensors, offsets):
    out[o:o + len(t.data)] = t.data
  return bytes(out)


def write(path: str, config: dict, tokenizer_kind: int, tokenizer: bytes,
          tensors: Sequence[Tensor]) -> int:
  """Writes the file; returns its size in bytes."""
  data = encode(config, tokenizer_kind, tokenizer, tensors)
  with open(path, "wb") as f:
    f.write(data)
  return len(data)


def decode(data: bytes, path: str = "<bytes>", *, check_data: bool = True) -> GnbFile:
  """Parses a whole file after validating it with the runtime's reader (csrc/runtime/gnb.h via
  `csrc.runtime._gnb`): one validation for nano_run and Python, FORMAT.md's Errors section.
  Raises ValueError naming the file, the field and the value; `check_data=False` skips the
  tensor data CRCs."""
  data = bytes(data)
  parsed = _gnb.parse(data, path, check_data)
  _, _, _, _, config_bytes, tok_kind, tok_bytes, _, _ = PREFIX.unpack_from(data, 0)
  pos = PREFIX.size + config_bytes
  tensors = {name: Tensor(name, dtype, tuple(shape), group, data[off:off + nbytes])
             for name, dtype, shape, group, off, nbytes in parsed["tensors"]}
  # The config as the reader sees it: every key of FORMAT.md, optional ones at their defaults.
  return GnbFile(parsed["config"], tok_kind, data[pos:pos + tok_bytes], tensors)


def read(path: str, **kw) -> GnbFile:
  """decode() of the file at `path` (a FIFO, device or directory is refused, never waited on)."""
  return decode(_gnb.read_file(os.fspath(path)), str(path), **kw)


def int4_from_tensor(t: Tensor):
  """File int4 tensor -> (q int8 [N, K], scales f32 [N, ceil(K/g)]) (for tests)."""
  n, k = t.shape
  g = t.group_size
  kp = -(-k // g) * g
  packed = np.frombuffer(t.data, np.uint8, n * kp // 2).reshape(n, kp // 32, 1, 16)
  nib = np.concatenate([packed & 0xF, packed >> 4], axis=2).astype(np.int8) - 8
  q = nib.reshape(n, kp)[:, :k]
  raw = np.frombuffer(t.data, np.uint16, n * kp // g, offset=n * kp // 2).reshape(n, kp // g)
  if t.dtype == INT4_F16:
    scales = raw.view(np.float16).astype(np.float32)
  else:
    scales = (raw.astype(np.uint32) << 16).view(np.float32)
  return q, scales
