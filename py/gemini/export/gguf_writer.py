"""An int4 `.gnb` Nano -> a llama-architecture GGUF that llama.cpp loads (written with PyPI `gguf`).

The .gnb int4 values are re-encoded exactly: Q4_0 keeps every nibble and scale (a scale group
of 64/128 repeats its scale per 32-block; bf16 scales are converted to f16), Q8_0 stores the
same values as int8. Q and K rows are permuted to llama.cpp's interleaved-pair RoPE order (the
inverse of what gemini.checkpoints.gguf undoes on import). Norm scales are F32. The tokenizer
becomes tokenizer.ggml.* (byte-level BPE -> 'gpt2', SentencePiece -> 'llama'), a ChatML prompt
template becomes tokenizer.chat_template.

llama.cpp's llama architecture has SiLU MLPs, no logit soft-cap and no q/k norms: models with
gelu, a soft-cap or qk_norm are refused (ValueError naming the config field).
"""

from __future__ import annotations

import struct
from typing import List, Tuple

import numpy as np
import sentencepiece as spm
from gguf import GGMLQuantizationType, GGUFWriter, TokenType

from gemini.export import gnb
from gemini.model import spec

Q4_0, Q8_0 = "q4_0", "q8_0"


def _rows_and_scales(t: gnb.Tensor) -> Tuple[np.ndarray, np.ndarray]:
  """int4 tensor -> (unsigned nibble bytes [N, K/2] in 32-blocks, f16 scales [N, K/32])."""
  n, k = t.shape
  g = t.group_size
  if k % 32:
    raise ValueError(f"tensor {t.name}: K={k} is not a multiple of 32 (GGUF blocks are 32 wide)")
  kp = -(-k // g) * g
  packed = np.frombuffer(t.data, np.uint8, n * kp // 2).reshape(n, kp // 2)[:, :k // 2]
  _, scales = gnb.int4_from_tensor(t)  # f32 [N, kp/g]
  per_block = np.repeat(scales, g // 32, axis=1)[:, :k // 32]
  f16 = per_block.astype(np.float16)
  if t.dtype == gnb.INT4_BF16 and not np.array_equal(f16.astype(np.float32), per_block):
    bad = int(np.argmax(f16.astype(np.float32) != per_block))
    raise ValueError(f"tensor {t.name}: bf16 scale {per_block.flat[bad]} has no exact f16 value; "
                     "export with --scale_dtype=float16 for GGUF")
  return np.ascontiguousarray(packed), f16


def _quantized(t: gnb.Tensor, kind: str, heads: int = 0) -> np.ndarray:
  """The GGUF block bytes [N, K/32 * block] of an int4 tensor as Q4_0 or Q8_0."""
  packed, scales = _rows_and_scales(t)
  if heads:
    packed = spec.rope_rows(packed, heads, to_llama=True)
    scales = spec.rope_rows(scales, heads, to_llama=True)
  n, nb = scales.shape
  sbytes = scales.view(np.uint8).reshape(n, nb, 2)
  blocks = packed.reshape(n, nb, 16)
  if kind == Q4_0:
    return np.concatenate([sbytes, blocks], axis=2).reshape(n, nb * 18)
  if kind == Q8_0:
    vals = np.concatenate([blocks & 0xF, blocks >> 4], axis=2).astype(np.int16) - 8  # [n, nb, 32]
    return np.concatenate([sbytes, vals.astype(np.int8).view(np.uint8)], axis=2).reshape(n, nb * 34)
  raise ValueError(f"tensor type {kind!r}: expected {Q4_0} or {Q8_0}")


def _f32(t: gnb.Tensor) -> np.ndarray:
  return np.frombuffer(t.data, np.float32).reshape(t.shape).copy()


def _bpe_tokenizer(blob: bytes):
  """.gnb byte-level BPE blob (FORMAT.md kind 2) -> (tokens, merges, types, split_digits)."""
  pos = 0

  def u32():
    nonlocal pos
    v = struct.unpack_from("<I", blob, pos)[0]
    pos += 4
    return v

  tokens: List[str] = []
  for _ in range(u32()):
    (n,) = struct.unpack_from("<H", blob, pos)
    tokens.append(blob[pos + 2:pos + 2 + n].decode("utf-8"))
    pos += 2 + n
  merges = []
  for _ in range(u32()):
    left, right = u32(), u32()
    merges.append(f"{tokens[left]} {tokens[right]}")
  specials = {u32() for _ in range(u32())}
  flags = u32()
  types = [3 if i in specials else 1 for i in range(len(tokens))]  # 3 = control, 1 = normal
  return tokens, merges, types, bool(flags & 1)


def _chatml_jinja(rendered: str) -> str:
  """Our rendered one-turn ChatML template ('{prompt}' marks the user text) -> the Jinja
  template llama.cpp applies; '' when the template is not ChatML."""
  if "<|im_start|>user\n{prompt}<|im_end|>" not in rendered:
    return ""
  system = ""
  if rendered.startswith("<|im_start|>system\n"):
    system = rendered[len("<|im_start|>system\n"):rendered.index("<|im_end|>")]
  # Newlines inside the string literals are real ones, as in SmolLM2's own template.
  head = ("{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
          + system.replace("'", "\\'") + "<|im_end|>\n' }}{% endif %}") if system else ""
  return ("{% for message in messages %}" + head +
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _check_llama_compatible(cfg: dict, path: str) -> None:
  if cfg.get("activation") != "silu":
    raise ValueError(f"{path}: activation={cfg.get('activation')!r}: llama.cpp's llama architecture "
                     "has SiLU MLPs only")
  if float(cfg.get("logit_softcap", 0.0)) > 0:
    raise ValueError(f"{path}: logit_softcap={cfg['logit_softcap']}: the llama architecture has no soft-cap")
  if cfg.get("qk_norm"):
    raise ValueError(f"{path}: qk_norm=true: the llama architecture has no q/k norms")


def write_from_gnb(gnb_path: str, out: str, tensor_type: str = Q4_0) -> None:
  """Converts the int4 .gnb at `gnb_path` into a llama-architecture GGUF at `out`."""
  f = gnb.read(gnb_path)
  c = f.config
  _check_llama_compatible(c, gnb_path)
  qtype = {Q4_0: GGMLQuantizationType.Q4_0, Q8_0: GGMLQuantizationType.Q8_0}[tensor_type]
  w = GGUFWriter(out, "llama")
  w.add_name(c["name"])
  w.add_context_length(int(c["max_seq_len"]))
  w.add_embedding_length(int(c["d_model"]))
  w.add_block_count(int(c["n_layers"]))
  w.add_feed_forward_length(int(c["d_ff"]))
  w.add_head_count(int(c["n_heads"]))
  w.add_head_count_kv(int(c["n_kv_heads"]))
  w.add_key_length(int(c["head_dim"]))
  w.add_value_length(int(c["head_dim"]))
  w.add_rope_dimension_count(int(c["head_dim"]))
  w.add_rope_freq_base(float(c["rope_base"]))
  w.add_layer_norm_rms_eps(float(c["norm_eps"]))
  w.add_vocab_size(int(c["vocab_size"]))
  w.add_file_type(2 if tensor_type == Q4_0 else 7)  # LLAMA_FTYPE_MOSTLY_Q4_0 / Q8_0
  _add_tokenizer(w, f)
  if int(c.get("bos_id", -1)) >= 0:
    w.add_bos_token_id(int(c["bos_id"]))
  if int(c.get("eos_id", -1)) >= 0:
    w.add_eos_token_id(int(c["eos_id"]))
  w.add_add_bos_token(bool(c.get("add_bos", False)))
  template = _chatml_jinja(c.get("chat_template", ""))
  if template:
    w.add_chat_template(template)

  for name, gnb_name, p, _ in spec.llama_tensors(gnb.model_config(c)):
    t = f.tensors[gnb_name]
    if p.k_axes is None:
      w.add_tensor(name, _f32(t))
    else:
      w.add_tensor(name, _quantized(t, tensor_type, p.layer_shape[1] if p.rope else 0),
                   raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def _add_tokenizer(w, f: gnb.GnbFile) -> None:
  if f.tokenizer_kind == gnb.TOK_BPE:
    tokens, merges, types, split_digits = _bpe_tokenizer(f.tokenizer)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm" if split_digits else "gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
  elif f.tokenizer_kind == gnb.TOK_SENTENCEPIECE:
    sp = spm.SentencePieceProcessor(model_proto=f.tokenizer)
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
      pieces.append(sp.id_to_piece(i))
      scores.append(float(sp.get_score(i)))
      types.append(TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL if sp.is_control(i)
                   else TokenType.BYTE if sp.is_byte(i) else TokenType.UNUSED if sp.is_unused(i)
                   else TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types([int(t) for t in types])
