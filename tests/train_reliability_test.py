"""End to end through the trainer's and the exporter's command lines: hostile inputs are
refused up front with messages naming the value, and a checkpoint describes itself.

- `--lr=nan` (and other non-finite / non-positive hyper-parameters) exit non-zero at start.
- `--seq_len=100000` on nano_tiny is refused before any step with XLA's memory estimate and
  what would fit.
- A corpus whose shards, tokenizer and model disagree on the vocabulary is refused before the
  first step (shards written by the test with valid CRCs).
- A few steps on a corpus with a SentencePiece tokenizer, then `nano_int4 --checkpoint=DIR`
  alone writes a .gnb the C++ runtime loads, tokenises with and runs.
- `nano_int4 --checkpoint=/nonexistent` refuses without creating the directory; a bad nested
  `--config.moe.top_k=x` is reported under its full name.
"""

import json
import os
import subprocess
import sys

import numpy as np
import sentencepiece as spm
from gemini.data import shard_writer
from csrc.runtime import _runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "py", "gemini", "train", "main.py")
NANO_INT4 = os.path.join(ROOT, "py", "gemini", "export", "nano_int4.py")
TINY = ["--config=nano_tiny", "--config.d_model=64", "--config.n_layers=2",
        "--config.n_heads=2", "--config.head_dim=32", "--config.d_ff=128"]
COMMON = ["--batch_size=4", "--seq_len=32", "--log_every=0", "--measure_peak=false",
          "--compilation_cache_dir=/tmp/gemini-jax-cache", "--warmup_steps=1"]


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "py"), ROOT] + sys.path)
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)
  return env


def _run(args, timeout=300):
  return subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True,
                        timeout=timeout)


def _spm(tmp_path, vocab):
  text = open("/usr/share/common-licenses/GPL-3").read()
  prefix = str(tmp_path / "spm")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_prefix=prefix,
                                 vocab_size=vocab, model_type="bpe", bos_id=1, eos_id=2,
                                 unk_id=0, pad_id=-1, minloglevel=2)
  return prefix + ".model", text


def _corpus(root, docs, shard_vocab, tokenizer=None, manifest_vocab=None):
  paths = shard_writer.write_shards(docs, os.path.join(root, "shards", "text"), shard_vocab)
  manifest = {"sources": {"text": {"shards": [os.path.relpath(p, root) for p in paths]}}}
  if manifest_vocab:
    manifest["vocab_size"] = manifest_vocab
  if tokenizer:
    os.makedirs(os.path.join(root, "tokenizer"), exist_ok=True)
    with open(tokenizer, "rb") as f, open(os.path.join(root, "tokenizer", "spm.model"), "wb") as g:
      g.write(f.read())
  with open(os.path.join(root, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  return str(root)


def test_non_finite_hyperparameters_exit_nonzero_at_start(tmp_path):
  for flag in ("--lr=nan", "--lr=0", "--eps=-1", "--clip_norm=inf"):
    work = tmp_path / flag.strip("-").replace("=", "_")
    res = _run([MAIN, *TINY, "--config.vocab_size=256", f"--workdir={work}", "--steps=3",
                "--data=synthetic", *COMMON, flag])
    assert res.returncode != 0, res.stdout[-2000:]
    assert flag.split("=")[0] + "=" in res.stderr, res.stderr[-2000:]
    assert not os.path.exists(work / "checkpoints")


def test_seq_len_beyond_memory_is_refused_with_an_estimate(tmp_path):
  res = _run([MAIN, "--config=nano_tiny", f"--workdir={tmp_path}", "--seq_len=100000",
              "--data=synthetic", "--steps=2", "--measure_peak=false",
              "--compilation_cache_dir="], timeout=600)
  assert res.returncode == 3, (res.stdout[-2000:], res.stderr[-3000:])
  assert "needs" in res.stderr and "GiB per device" in res.stderr, res.stderr[-3000:]
  assert "estimated to fit: --seq_len=" in res.stderr and "Nothing was run" in res.stderr
  assert "step 1/" not in res.stdout
  needed = float(res.stderr.split("needs ")[1].split(" GiB")[0])
  # Independent floor: XLA attention's f32 scores alone are B * H * S^2 * 4 bytes.
  assert needed * 2**30 >= 8 * 4 * 100000**2 * 4


def test_vocabulary_disagreement_is_refused_before_the_first_step(tmp_path):
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 60000, size=40) for _ in range(8)]
  root = _corpus(tmp_path / "c1", docs, shard_vocab=65535)
  res = _run([MAIN, *TINY, "--config.vocab_size=256", f"--workdir={tmp_path / 'w1'}",
              f"--data={root}", "--steps=2", *COMMON])
  assert res.returncode != 0
  assert "65535 ids but the model's vocab_size is 256" in res.stderr, res.stderr[-2000:]
  assert "step 1/" not in res.stdout

  sp_model, _ = _spm(tmp_path, 300)
  docs = [rng.integers(0, 256, size=40) for _ in range(8)]
  root = _corpus(tmp_path / "c2", docs, shard_vocab=256, tokenizer=sp_model)
  res = _run([MAIN, *TINY, "--config.vocab_size=512", f"--workdir={tmp_path / 'w2'}",
              f"--data={root}", "--steps=2", *COMMON])
  assert res.returncode != 0
  assert "shard vocab_size 256 but the corpus' tokenizer" in res.stderr, res.stderr[-2000:]
  assert "has 300 pieces" in res.stderr


def test_export_needs_only_the_checkpoint(tmp_path):
  sp_model, text = _spm(tmp_path, 400)
  sp = spm.SentencePieceProcessor(model_file=sp_model)
  docs = [[1] + sp.encode(line) + [2] for line in text.splitlines() if len(line) > 20][:300]
  root = _corpus(tmp_path / "corpus", docs, shard_vocab=400, tokenizer=sp_model)
  work = tmp_path / "work"
  res = _run([MAIN, *TINY, "--config.vocab_size=400", f"--workdir={work}", f"--data={root}",
              "--steps=3", "--checkpoint_every=3", *COMMON])
  assert res.returncode == 0, res.stderr[-3000:]

  out = tmp_path / "nano.gnb"
  res = _run([NANO_INT4, f"--checkpoint={work}", f"--out={out}", "--group_size=32"])
  assert res.returncode == 0, res.stderr[-3000:]
  assert "nano_tiny step 3" in res.stdout
  cfg, names = _runtime.parse_bytes(out.read_bytes(), str(out))
  assert (cfg["d_model"], cfg["n_layers"], cfg["vocab_size"]) == (64, 2, 400)
  rt = _runtime.Runtime(str(out))
  sample = "This License applies to any program or other work"
  assert rt.encode(sample) == sp.encode(sample)
  logits = np.asarray(rt.logits([1] + sp.encode(sample)))
  assert logits.shape[-1] == 400 and np.all(np.isfinite(logits))


def test_nano_int4_missing_checkpoint_creates_nothing(tmp_path):
  missing = tmp_path / "nonexistent"
  res = _run([NANO_INT4, f"--checkpoint={missing}", f"--out={tmp_path / 'x.gnb'}"])
  assert res.returncode != 0 and "does not exist" in res.stderr, res.stderr[-2000:]
  assert not os.path.exists(missing)
  res = _run([MAIN, "--config=pro_tiny", "--config.moe.top_k=x", f"--workdir={tmp_path}",
              "--data=synthetic"])
  assert res.returncode != 0
  assert "--config.moe.top_k='x': expected int" in res.stderr, res.stderr[-2000:]
