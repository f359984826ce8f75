"""`tools/bazel run //py/gemini:family`: prints the Gemini family table.

Flags: --seq_len (context for FLOPs), --configs (comma list; default every preset).
"""

from absl import app, flags

from gemini import config, family

_SEQ = flags.DEFINE_integer("seq_len", 8192, "Sequence length for per-token FLOPs.")
_CONFIGS = flags.DEFINE_list("configs", list(config.PRESETS), "Presets to list.")


def main(argv):
  del argv
  cfgs = [config.get_config(name) for name in _CONFIGS.value]
  print(family.format_table(family.family_rows(cfgs, _SEQ.value), _SEQ.value))
  print("\nparams/active: parameters in total / used per text token (MoE: top-k experts).\n"
        "FLOPs: multiply-add = 2; train = fwd + bwd at causal average context; decode attends "
        "to the full context.\nKV bytes: bf16 K and V for all layers. int4: text decoder, group "
        "32, f16 scales (the .gnb payload).")


if __name__ == "__main__":
  app.run(main)
