"""Float params -> int4 -> a .gnb file (the library face of `nano_int4`)."""

from __future__ import annotations

from typing import Optional

from gemini.config import ModelConfig
from gemini.export import gnb
from gemini.quant import params as qparams


def export(path: str, params: dict, cfg: ModelConfig, *, group_size: int = 32,
           scale_dtype: str = "float16", tokenizer_kind: int = gnb.TOK_NONE,
           tokenizer: bytes = b"", awq_scales: Optional[dict] = None, bos_id: int = -1,
           eos_id: int = -1, add_bos: bool = False, chat_template: str = "") -> dict:
  """Quantises `params` (the family tree, f32) and writes `path`; returns the int4 tree
  (the JAX int4 model the file holds, for parity checks)."""
  q = qparams.quantize_params(params, cfg, group_size=group_size, scale_dtype=scale_dtype,
                              awq_scales=awq_scales)
  config = gnb.config_dict(cfg, group_size, bos_id=bos_id, eos_id=eos_id, add_bos=add_bos,
                           chat_template=chat_template)
  gnb.write(path, config, tokenizer_kind, tokenizer, gnb.model_tensors(q, cfg))
  return q
