"""Export a trained Nano (or an imported GGUF model) to an int4 `.gnb` file for `nano_run`.

  bazel run //py/gemini/export:nano_int4 -- --checkpoint=WORKDIR --out=nano.gnb
  bazel run //py/gemini/export:nano_int4 -- --gguf=smollm2 --out=smollm2.gnb

--checkpoint takes a training workdir (or its checkpoints/ folder): the newest step that
verifies (gemini.train.checkpoint.load_for_inference) gives the params, the model config and
the tokenizer the run trained with; --config / --tokenizer replace them (needed only for
checkpoints that do not record them). --awq_text calibrates activation-aware scales on that
text (tokenised with the model's tokenizer) before rounding.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before JAX starts: no accelerator probing

# pylint: disable=wrong-import-position
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
from absl import app, flags

from gemini.checkpoints import gguf
from gemini.config import ModelConfig, get_config
from gemini.export import export, gguf_writer, gnb, tokenizer_blob
from gemini.quant import awq
from gemini.train import checkpoint

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Training workdir or its checkpoints/ directory.")
flags.DEFINE_string("config", None, "Config preset replacing the one --checkpoint records.")
flags.DEFINE_string("tokenizer", None, "SentencePiece model file replacing the one "
                    "--checkpoint records.")
flags.DEFINE_string("gguf", None, "Export a GGUF instead: a path, or 'smollm2' for the bundled one.")
flags.DEFINE_string("out", None, "Output .gnb path.")
flags.DEFINE_integer("group_size", 32, "int4 group size along the input dim: 32, 64 or 128.")
flags.DEFINE_enum("scale_dtype", "float16", ["float16", "bfloat16"], "Scale dtype.")
flags.DEFINE_string("awq_text", None, "Text file for activation-aware scaling calibration.")
flags.DEFINE_integer("awq_tokens", 512, "Calibration tokens taken from --awq_text.")
flags.DEFINE_integer("eos_id", -1, "EOS id for --checkpoint exports (-1: the tokenizer's).")
flags.DEFINE_enum("format", "gnb", ["gnb", "gguf"],
                  "gnb, or gguf: a llama-architecture Q4_0 GGUF for llama.cpp (gguf_writer.py).")


def chatml_template(chat_template: str) -> str:
  """The prompt template `nano_run --chat` fills: the GGUF's ChatML with one user turn."""
  return gguf.apply_chat_template(chat_template, [{"role": "user", "content": "{prompt}"}])


def export_gguf(path: str, out: str, group_size: int, scale_dtype: str,
                awq_text: str | None = None, awq_tokens: int = 512):
  """GGUF (e.g. SmolLM2-135M-Instruct) -> int4 .gnb with its byte-level BPE tokenizer.
  Returns (GGUFModel, int4 params tree)."""
  model = gguf.load(None if path == "smollm2" else path)
  awq_scales = _calibrate(model.params, model.cfg, model.tokenizer.encode(awq_text).ids,
                          group_size, scale_dtype, awq_tokens) if awq_text else None
  q = export.export(out, model.params, model.cfg, group_size=group_size, scale_dtype=scale_dtype,
                    tokenizer_kind=gnb.TOK_BPE, tokenizer=tokenizer_blob.bpe_blob(model.tokenizer),
                    awq_scales=awq_scales, bos_id=model.bos_id, eos_id=model.eos_id,
                    add_bos=False, chat_template=chatml_template(model.chat_template))
  return model, q


def _calibrate(params, cfg: ModelConfig, ids, group_size, scale_dtype, n_tokens):
  ids = list(ids)[:n_tokens]
  seq = min(len(ids), 128)
  if seq < 8:
    raise ValueError(f"--awq_text gives only {len(ids)} tokens; need at least 8")
  rows = np.asarray(ids[:len(ids) // seq * seq], np.int32).reshape(-1, seq)
  return awq.calibrate(params, cfg, jnp.asarray(rows), group_size=group_size,
                       scale_dtype=scale_dtype)


def main(argv):
  del argv
  if not FLAGS.out:
    sys.exit("nano_int4: --out is required")
  if FLAGS.gguf:
    awq_text = open(FLAGS.awq_text).read() if FLAGS.awq_text else None
    model, _ = export_gguf(FLAGS.gguf, FLAGS.out, FLAGS.group_size, FLAGS.scale_dtype,
                           awq_text, FLAGS.awq_tokens)
    name = model.cfg.name
  elif FLAGS.checkpoint:
    try:
      m = checkpoint.load_for_inference(
          FLAGS.checkpoint, get_config(FLAGS.config) if FLAGS.config else None,
          log=lambda s: print(s, file=sys.stderr))
    except (FileNotFoundError, ValueError) as e:
      sys.exit(f"nano_int4: {e}")
    cfg, params, step = m.cfg, m.params, m.step
    kind, tok, eos = gnb.TOK_NONE, b"", FLAGS.eos_id
    sp = None
    if FLAGS.tokenizer:
      kind, tok = tokenizer_blob.sentencepiece_section(FLAGS.tokenizer)
    elif m.tokenizer_kind == "sentencepiece":
      kind, tok = gnb.TOK_SENTENCEPIECE, m.tokenizer
    if tok:
      sp = spm.SentencePieceProcessor(model_proto=tok)
      if eos < 0:
        eos = sp.eos_id()
    awq_scales = None
    if FLAGS.awq_text:
      if sp is None:
        sys.exit("nano_int4: --awq_text needs --tokenizer")
      awq_scales = _calibrate(params, cfg, sp.encode(open(FLAGS.awq_text).read()),
                              FLAGS.group_size, FLAGS.scale_dtype, FLAGS.awq_tokens)
    export.export(FLAGS.out, params, cfg, group_size=FLAGS.group_size,
                  scale_dtype=FLAGS.scale_dtype, tokenizer_kind=kind, tokenizer=tok,
                  awq_scales=awq_scales, bos_id=sp.bos_id() if sp else -1, eos_id=eos,
                  add_bos=bool(sp is not None and sp.bos_id() >= 0))
    name = f"{cfg.name} step {step}"
  else:
    sys.exit("nano_int4: pass --checkpoint=DIR or --gguf=PATH|smollm2")
  size = os.path.getsize(FLAGS.out)
  print(f"nano_int4: wrote {FLAGS.out} ({size / 2**20:.1f} MiB) from {name}, "
        f"group {FLAGS.group_size}, {FLAGS.scale_dtype} scales")


def run(argv):
  """main(), then for --format=gguf the .gnb (written beside --out) converted to --out."""
  if FLAGS.format == "gnb" or not FLAGS.out:
    return main(argv)
  final = FLAGS.out
  FLAGS.out = final + ".gnb.tmp"
  try:
    main(argv)
    gguf_writer.write_from_gnb(FLAGS.out, final)
  finally:
    if os.path.exists(FLAGS.out):
      os.remove(FLAGS.out)
  print(f"nano_int4: wrote {final} (GGUF, llama architecture, Q4_0)")


if __name__ == "__main__":
  app.run(run)
