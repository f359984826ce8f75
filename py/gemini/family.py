"""The Gemini family table: parameters, active parameters, FLOPs, KV bytes, int4 bytes.

Every number is computed from a `ModelConfig` by formula. The formulas count exactly the
parameter tree that `gemini.model` builds (a test holds the two equal with
`jax.eval_shape`), which is, with D=d_model, H=n_heads, K=n_kv_heads, Dh=head_dim,
F=d_ff, V=vocab_size, E=moe.num_experts, Fe=moe.d_ff:

    embed/tokens                      [V, D]
    layers/<i>/attn_norm/scale        [D]
    layers/<i>/attn/{wq [D,H,Dh], wk [D,K,Dh], wv [D,K,Dh], wo [H,Dh,D]}
    layers/<i>/mlp_norm/scale         [D]
    layers/<i>/mlp/{w_gate [D,F], w_up [D,F], w_down [F,D]}                 dense layers
    layers/<i>/moe/{router [D,E], w_gate [E,D,Fe], w_up [E,D,Fe], w_down [E,Fe,D]}  MoE layers
    final_norm/scale                  [D]
    unembed                           [D, V]     only when tie_embeddings=False
    vision/ (if enabled; Dv, Fv, P, C, Np from VisionConfig)
      patch_embed [P*P*C, Dv], patch_bias [Dv], pos_embed [Np, Dv],
      layers/<j>/ encoder block (below), final_norm/scale [Dv], proj [Dv, D]
    audio/ (if enabled; Da, Fa, Kc=conv_kernel, M=n_mels from AudioConfig)
      conv1 [Kc, M, Da], conv1_bias [Da], conv2 [Kc, Da, Da], conv2_bias [Da],
      layers/<j>/ encoder block (below), final_norm/scale [Da], proj [Da, D]
    encoder block (width W, hidden Fw): norm1/scale [W], attn/{wq,wk,wv,wo} [W, W] each
      (as [W,heads,W/heads] / [heads,W/heads,W]), norm2/scale [W], mlp/{w_up [W,Fw], w_down [Fw,W]}

FLOPs count multiply-adds as 2 FLOPs. Per token, with N_mm the active matmul parameters of
the decoder (attention, MLP or the top-k experts plus router, and the output projection —
the embedding lookup is not a matmul):
    forward(S)  = 2 N_mm + 2 * 2 L H Dh * S_eff      (QK^T and AV)
    train(S)    = 3 forward(S)  with S_eff = S/2 (causal average)
    decode(S)   = forward with S_eff = S (attends to the whole cache)
Encoders are excluded from per-token FLOPs: they run once per media item, not per token.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List

from gemini.config import AudioConfig, ModelConfig, VisionConfig


def _encoder_block(width: int, hidden: int) -> int:
  return 2 * width + 4 * width * width + 2 * width * hidden


def vision_params(v: VisionConfig, d_model: int) -> int:
  if not v.enabled:
    return 0
  patch_in = v.patch_size * v.patch_size * v.channels
  return (patch_in * v.d_model + v.d_model + v.num_patches * v.d_model
          + v.n_layers * _encoder_block(v.d_model, v.d_ff) + v.d_model + v.d_model * d_model)


def audio_params(a: AudioConfig, d_model: int) -> int:
  if not a.enabled:
    return 0
  conv = a.conv_kernel * a.n_mels * a.d_model + a.d_model + a.conv_kernel * a.d_model ** 2 + a.d_model
  return conv + a.n_layers * _encoder_block(a.d_model, a.d_ff) + a.d_model + a.d_model * d_model


def attention_params(cfg: ModelConfig) -> int:
  d, h, k, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  return 2 * d * h * dh + 2 * d * k * dh


def dense_mlp_params(cfg: ModelConfig) -> int:
  return 3 * cfg.d_model * cfg.d_ff


def expert_params(cfg: ModelConfig) -> int:
  """One expert's gated MLP."""
  return 3 * cfg.d_model * cfg.moe.d_ff


def param_groups(cfg: ModelConfig) -> Dict[str, int]:
  """Total parameters by group: embed, attention, mlp, moe, norms, unembed, vision, audio."""
  n_moe = cfg.num_moe_layers
  n_dense = cfg.n_layers - n_moe
  e = cfg.moe.num_experts
  return {
      "embed": cfg.vocab_size * cfg.d_model,
      "attention": cfg.n_layers * attention_params(cfg),
      "mlp": n_dense * dense_mlp_params(cfg),
      "moe": n_moe * (e * expert_params(cfg) + cfg.d_model * e),
      "norms": (2 * cfg.n_layers + 1) * cfg.d_model,
      "unembed": 0 if cfg.tie_embeddings else cfg.d_model * cfg.vocab_size,
      "vision": vision_params(cfg.vision, cfg.d_model),
      "audio": audio_params(cfg.audio, cfg.d_model),
  }


def total_params(cfg: ModelConfig) -> int:
  return sum(param_groups(cfg).values())


def decoder_params(cfg: ModelConfig) -> int:
  """Text decoder only (what ships on device): no modality encoders."""
  g = param_groups(cfg)
  return total_params(cfg) - g["vision"] - g["audio"]


def active_matmul_params(cfg: ModelConfig) -> int:
  """Matmul parameters one text token touches (top-k experts, router, output projection)."""
  n_moe = cfg.num_moe_layers
  per_moe = cfg.moe.top_k * expert_params(cfg) + cfg.d_model * cfg.moe.num_experts if n_moe else 0
  return (cfg.n_layers * attention_params(cfg) + (cfg.n_layers - n_moe) * dense_mlp_params(cfg)
          + n_moe * per_moe + cfg.d_model * cfg.vocab_size)


def active_params(cfg: ModelConfig) -> int:
  """Text-decoder parameters one token uses: all but the experts it was not routed to."""
  idle = cfg.num_moe_layers * (cfg.moe.num_experts - cfg.moe.top_k) * expert_params(cfg)
  return decoder_params(cfg) - idle


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
  vectors = param_groups(cfg)["norms"]
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
