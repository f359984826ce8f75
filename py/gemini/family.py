"""The Gemini family table: parameters, active parameters, FLOPs, KV bytes, int4 bytes.

Parameter counts are sums over `gemini.model.spec.param_spec(cfg)` (the one list of the
model's arrays; its docstring draws the tree). FLOPs count multiply-adds as 2 FLOPs. Per
token, with N_mm the active matmul parameters of the decoder (attention, MLP or the top-k
experts plus router, and the output projection — the embedding lookup is not a matmul):
    forward(S)  = 2 N_mm + 2 * 2 L H Dh * S_eff      (QK^T and AV)
    train(S)    = 3 forward(S)  with S_eff = S/2 (causal average)
    decode(S)   = forward with S_eff = S (attends to the whole cache)
Encoders are excluded from per-token FLOPs: they run once per media item, not per token.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List

from gemini.config import AudioConfig, ModelConfig, VisionConfig
from gemini.model import spec


def vision_params(v: VisionConfig, d_model: int) -> int:
  return spec.num_params(spec.vision_params(v, d_model)) if v.enabled else 0


def audio_params(a: AudioConfig, d_model: int) -> int:
  return spec.num_params(spec.audio_params(a, d_model)) if a.enabled else 0


def _decoder(cfg: ModelConfig) -> List[spec.Param]:
  return [p for p in spec.param_spec(cfg) if p.path[0] not in ("vision", "audio")]


def _is_expert(p: spec.Param) -> bool:
  return "moe" in p.path and p.path[-1] != "router"


def _active_fraction(p: spec.Param, cfg: ModelConfig) -> float:
  return cfg.moe.top_k / cfg.moe.num_experts if _is_expert(p) else 1.0


def total_params(cfg: ModelConfig) -> int:
  return spec.num_params(spec.param_spec(cfg))


def decoder_params(cfg: ModelConfig) -> int:
  """Text decoder only (what ships on device): no modality encoders."""
  return spec.num_params(_decoder(cfg))


def active_params(cfg: ModelConfig) -> int:
  """Text-decoder parameters one token uses: all but the experts it was not routed to."""
  return round(sum(p.size * _active_fraction(p, cfg) for p in _decoder(cfg)))


def _vector_params(cfg: ModelConfig) -> int:
  return sum(p.size for p in _decoder(cfg) if len(p.layer_shape) == 1)


def active_matmul_params(cfg: ModelConfig) -> int:
  """Matmul parameters one text token touches (top-k experts, router, output projection)."""
  mats = sum(p.size * _active_fraction(p, cfg) for p in _decoder(cfg)
             if len(p.layer_shape) >= 2 and p.path != ("embed", "tokens"))
  tied_out = cfg.d_model * cfg.vocab_size if cfg.tie_embeddings else 0
  return round(mats) + tied_out


def attention_flops_per_token(cfg: ModelConfig, context: float) -> float:
  return 4.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * context


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs per token of a causal sequence of length `seq_len`."""
  return 2.0 * active_matmul_params(cfg) + attention_flops_per_token(cfg, seq_len / 2)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward + backward FLOPs per trained token (backward = 2x forward)."""
  return 3.0 * forward_flops_per_token(cfg, seq_len)


def decode_flops_per_token(cfg: ModelConfig, context: int) -> float:
  """FLOPs to generate one token attending to a cache of `context` tokens."""
  return 2.0 * active_matmul_params(cfg) + attention_flops_per_token(cfg, context)


def kv_bytes_per_token(cfg: ModelConfig, bytes_per_value: int = 2) -> int:
  """KV-cache bytes per cached token (bf16 by default): K and V for every layer."""
  return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * bytes_per_value


def int4_bytes(cfg: ModelConfig, group_size: int = 32, scale_bytes: int = 2) -> int:
  """Bytes of the text decoder with matrices in group-wise int4 (one scale per group).

  Vectors (norm scales) stay f32. This is the tensor data of the exported .gnb file.
  """
  vectors = _vector_params(cfg)
  matrices = decoder_params(cfg) - vectors
  return int(matrices // 2 + math.ceil(matrices / group_size) * scale_bytes + 4 * vectors)


@dataclasses.dataclass(frozen=True)
class FamilyRow:
  name: str
  total_params: int
  active_params: int
  train_gflops_per_token: float
  decode_gflops_per_token: float
  kv_bytes_per_token: int
  int4_bytes: int


def family_rows(cfgs: List[ModelConfig], seq_len: int = 8192) -> List[FamilyRow]:
  return [FamilyRow(c.name, total_params(c), active_params(c),
                    train_flops_per_token(c, min(seq_len, c.max_seq_len)) / 1e9,
                    decode_flops_per_token(c, min(seq_len, c.max_seq_len)) / 1e9,
                    kv_bytes_per_token(c), int4_bytes(c)) for c in cfgs]


def _human(n: float) -> str:
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.2f}{unit}"
  return f"{n:.0f}"


def _bytes(n: float) -> str:
  for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n:.0f} B"


def format_table(rows: List[FamilyRow], seq_len: int) -> str:
  header = ("member", "params", "active/token", f"train GFLOP/tok @{seq_len}",
            f"decode GFLOP/tok @{seq_len}", "KV bytes/token", "int4 weights")
  body = [(r.name, _human(r.total_params), _human(r.active_params),
           f"{r.train_gflops_per_token:,.2f}", f"{r.decode_gflops_per_token:,.2f}",
           _bytes(r.kv_bytes_per_token), _bytes(r.int4_bytes)) for r in rows]
  widths = [max(len(str(x[i])) for x in [header] + body) for i in range(len(header))]
  line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"
  sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(header), sep] + [line(b) for b in body])
