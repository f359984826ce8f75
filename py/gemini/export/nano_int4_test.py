"""nano_int4 end to end on a training checkpoint: Orbax restore -> int4 .gnb with a
SentencePiece tokenizer -> the C++ runtime's ids and logits equal the Python side's."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import sentencepiece as spm

from csrc.runtime import _runtime
from gemini.config import get_config
from gemini.export import export, gnb, nano_int4
from gemini.quant import params as qparams, test_util
from gemini.quant.test_util import random_params
from gemini.train import checkpoint


def _train_sentencepiece(tmp_path) -> str:
  text = open("/usr/share/common-licenses/GPL-3").read()
  prefix = str(tmp_path / "sp")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_prefix=prefix,
                                 vocab_size=400, model_type="bpe", bos_id=1, eos_id=2,
                                 unk_id=0, pad_id=-1, minloglevel=2)
  return prefix + ".model"


def test_checkpoint_to_gnb_to_runtime(tmp_path):
  cfg = get_config("nano_tiny").replace(vocab_size=400, d_model=64, n_layers=2, d_ff=128,
                                        head_dim=16)
  params = random_params(cfg, jax.random.key(3))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "work" / "checkpoints"), async_save=False)
  ckpt.save(7, {"params": params, "step": np.int32(7)}, {"step": 7})
  ckpt.close()
  m = checkpoint.load_for_inference(str(tmp_path / "work"), cfg)
  restored = m.params
  assert m.step == 7
  np.testing.assert_array_equal(restored["blocks"][0]["mlp"]["w_down"],
                                np.asarray(params["blocks"][0]["mlp"]["w_down"]))
  sp_model = _train_sentencepiece(tmp_path)
  kind, blob = gnb.TOK_SENTENCEPIECE, open(sp_model, "rb").read()
  out = str(tmp_path / "nano.gnb")
  q = export.export(out, restored, cfg, group_size=64, scale_dtype="bfloat16",
                    tokenizer_kind=kind, tokenizer=blob, bos_id=1, eos_id=2, add_bos=True)
  rt = _runtime.Runtime(out)
  sp = spm.SentencePieceProcessor(model_file=sp_model)
  text = "This License applies to any program, 2 times: naïve!"
  assert rt.encode(text) == sp.encode(text)
  assert rt.decode(sp.encode(text)).decode() == sp.decode(sp.encode(text))
  ids = [1] + sp.encode(text)
  want = np.asarray(test_util.logits(q, ids, cfg))
  got = rt.logits(ids)
  assert np.max(np.abs(got - want)) <= 1e-3 * np.max(np.abs(want))


def test_cli_runs_on_a_checkpoint(tmp_path):
  """The absl entry point itself (what `bazel run //py/gemini/export:nano_int4` runs)."""
  cfg = get_config("nano_tiny").replace(n_layers=1)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  ckpt.save(1, {"params": random_params(cfg, jax.random.key(0))}, {})
  ckpt.close()
  out = tmp_path / "x.gnb"
  here = os.path.dirname(os.path.abspath(nano_int4.__file__))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  cmd = [sys.executable, os.path.join(here, "nano_int4.py"), f"--checkpoint={tmp_path}",
         "--config=nano_tiny", f"--out={out}", "--group_size=128"]
  # The preset has 4 layers; the checkpoint 1: the export must refuse, naming the mismatch.
  res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert res.returncode != 0 and "n_layers=4" in res.stderr, res.stderr[-2000:]
  cmd[3] = "--config=nano_tiny"
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  ckpt.save(2, {"params": random_params(get_config("nano_tiny"), jax.random.key(0))}, {})
  ckpt.close()
  res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "nano_tiny step 2" in res.stdout
  cfg_, names = _runtime.parse_bytes(out.read_bytes(), str(out))
  assert cfg_["group_size"] == 128 and cfg_["n_layers"] == 4 and len(names) == 2 + 4 * 9
