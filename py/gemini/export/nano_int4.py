"""Export a trained Nano (or an imported GGUF model) to an int4 `.gnb` file for `nano_run`.

  bazel run //py/gemini/export:nano_int4 -- --checkpoint=WORKDIR --config=nano_tiny \
      --tokenizer=WORKDIR/tokenizer.model --out=nano.gnb
  bazel run //py/gemini/export:nano_int4 -- --gguf=smollm2 --out=smollm2.gnb

--checkpoint takes a training workdir (or its checkpoints/ folder): the newest finished
Orbax step's `state['params']` is exported. --awq_text calibrates activation-aware scales on
that text (tokenised with the model's tokenizer) before rounding.
"""

from __future__ import annotations

import os
import sys
from typing import Tuple

import numpy as np
from absl import app, flags

from gemini.config import ModelConfig, get_config
from gemini.export import export, gnb, tokenizer_blob

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Training workdir or its checkpoints/ directory.")
flags.DEFINE_string("config", "nano_tiny", "Config preset of --checkpoint.")
flags.DEFINE_string("tokenizer", None, "SentencePiece model file stored in the .gnb.")
flags.DEFINE_string("gguf", None, "Export a GGUF instead: a path, or 'smollm2' for the bundled one.")
flags.DEFINE_string("out", None, "Output .gnb path.")
flags.DEFINE_integer("group_size", 32, "int4 group size along the input dim: 32, 64 or 128.")
flags.DEFINE_enum("scale_dtype", "float16", ["float16", "bfloat16"], "Scale dtype.")
flags.DEFINE_string("awq_text", None, "Text file for activation-aware scaling calibration.")
flags.DEFINE_integer("awq_tokens", 512, "Calibration tokens taken from --awq_text.")
flags.DEFINE_integer("eos_id", -1, "EOS id for --checkpoint exports (-1: the tokenizer's).")


def restore_params(directory: str) -> Tuple[dict, int]:
  """The newest finished step's float params (numpy f32) from an Orbax training checkpoint."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = os.path.abspath(directory)
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  mngr = ocp.CheckpointManager(directory)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"{directory}: no finished checkpoint step")
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = out["state"]
  if "params" not in state:
    raise ValueError(f"{directory}/{step}: state has no 'params' (keys: {sorted(state)})")
  return _lists(state["params"]), step


def _lists(tree):
  """Orbax may restore Python lists as dicts keyed '0', '1', ...: turn them back, to f32."""
  if isinstance(tree, dict):
    if tree and all(k.isdigit() for k in tree):
      return [_lists(tree[str(i)]) for i in range(len(tree))]
    return {k: _lists(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_lists(v) for v in tree]
  return np.asarray(tree, np.float32)


def chatml_template(chat_template: str) -> str:
  """The prompt template `nano_run --chat` fills: the GGUF's ChatML with one user turn."""
  from gemini.checkpoints import gguf  # pylint: disable=import-outside-toplevel
  return gguf.apply_chat_template(chat_template, [{"role": "user", "content": "{prompt}"}])


def export_gguf(path: str, out: str, group_size: int, scale_dtype: str,
                awq_text: str | None = None, awq_tokens: int = 512):
  """GGUF (e.g. SmolLM2-135M-Instruct) -> int4 .gnb with its byte-level BPE tokenizer.
  Returns (GGUFModel, int4 params tree)."""
  from gemini.checkpoints import gguf  # pylint: disable=import-outside-toplevel
  model = gguf.load(None if path == "smollm2" else path)
  awq_scales = _calibrate(model.params, model.cfg, model.tokenizer.encode(awq_text).ids,
                          group_size, scale_dtype, awq_tokens) if awq_text else None
  q = export.export(out, model.params, model.cfg, group_size=group_size, scale_dtype=scale_dtype,
                    tokenizer_kind=gnb.TOK_BPE, tokenizer=tokenizer_blob.bpe_blob(model.tokenizer),
                    awq_scales=awq_scales, bos_id=model.bos_id, eos_id=model.eos_id,
                    add_bos=False, chat_template=chatml_template(model.chat_template))
  return model, q


def _calibrate(params, cfg: ModelConfig, ids, group_size, scale_dtype, n_tokens):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from gemini.quant import awq  # pylint: disable=import-outside-toplevel
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
    cfg = get_config(FLAGS.config)
    params, step = restore_params(FLAGS.checkpoint)
    kind, tok, eos = gnb.TOK_NONE, b"", FLAGS.eos_id
    sp = None
    if FLAGS.tokenizer:
      kind, tok = tokenizer_blob.sentencepiece_section(FLAGS.tokenizer)
      import sentencepiece as spm  # pylint: disable=import-outside-toplevel
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
    sys.exit("nano_int4: pass --checkpoint=DIR (with --config) or --gguf=PATH|smollm2")
  size = os.path.getsize(FLAGS.out)
  print(f"nano_int4: wrote {FLAGS.out} ({size / 2**20:.1f} MiB) from {name}, "
        f"group {FLAGS.group_size}, {FLAGS.scale_dtype} scales")


if __name__ == "__main__":
  app.run(main)
