"""Hostile GGUF files (valid containers, written with gguf's own writer) are refused with a
GGUFError naming the file and the metadata key; a FIFO is refused without blocking.

Tensors are random arrays under llama.cpp's names and shapes, so the files do not depend on
our parameter tree; the one intact file is imported, as the reference that the writer works.
"""

import os
import threading

import numpy as np
import pytest
from gguf import GGUFWriter

from gemini.checkpoints import gguf as G

D, H, KV, DH, FF, V, L = 32, 4, 2, 8, 48, 12, 2
TOKENS = ["a", "b", "c", "ab", "abc", "d", "e", "de", "f", "g", "<s>", "</s>"]
MERGES = ["a b", "ab c", "d e"]


def _write(path, *, heads=H, rope_dim=DH, block_count=L, layers=L, eps=1e-5, bos=10,
           merges=MERGES, vocab=V):
  w = GGUFWriter(str(path), "llama")
  w.add_block_count(block_count)
  w.add_context_length(64)
  w.add_embedding_length(D)
  w.add_feed_forward_length(FF)
  w.add_head_count(heads)
  w.add_head_count_kv(KV)
  w.add_rope_freq_base(10000.0)
  w.add_layer_norm_rms_eps(eps)
  w.add_rope_dimension_count(rope_dim)
  w.add_vocab_size(vocab)
  w.add_tokenizer_model("gpt2")
  w.add_token_list(TOKENS)
  w.add_token_types([1] * (V - 2) + [3, 3])
  w.add_token_merges(merges)
  w.add_bos_token_id(bos)
  w.add_eos_token_id(11)
  rng = np.random.default_rng(0)
  put = lambda name, *shape: w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
  put("token_embd.weight", V, D)
  put("output_norm.weight", D)
  for i in range(layers):
    b = f"blk.{i}."
    put(b + "attn_q.weight", H * DH, D)
    put(b + "attn_k.weight", KV * DH, D)
    put(b + "attn_v.weight", KV * DH, D)
    put(b + "attn_output.weight", D, H * DH)
    put(b + "ffn_gate.weight", FF, D)
    put(b + "ffn_up.weight", FF, D)
    put(b + "ffn_down.weight", D, FF)
    put(b + "attn_norm.weight", D)
    put(b + "ffn_norm.weight", D)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def test_intact_file_imports(tmp_path):
  m = G.load(_write(tmp_path / "ok.gguf"), name="t")
  assert (m.cfg.n_layers, m.cfg.n_heads, m.cfg.head_dim, m.cfg.vocab_size) == (L, H, DH, V)
  assert m.bos_id == 10 and m.tokenizer.encode("abc").ids == [4]


@pytest.mark.parametrize("kw,message", [
    (dict(heads=0), r"llama\.attention\.head_count=0 is out of range"),
    (dict(rope_dim=7), r"head dimension 7 \(llama\.rope\.dimension_count\) is odd"),
    (dict(block_count=1), r"llama\.block_count=1 but the file holds tensors of 2 layers"),
    (dict(block_count=3), r"llama\.block_count=3 but the file holds tensors of 2 layers"),
    (dict(bos=10**9), r"tokenizer\.ggml\.bos_token_id=1000000000 is out of range \[0, 12\)"),
    (dict(eps=float("nan")), r"llama\.attention\.layer_norm_rms_epsilon=nan must be finite"),
    (dict(eps=-1.0), r"llama\.attention\.layer_norm_rms_epsilon=-1.0 must be finite and > 0"),
    (dict(merges=["a b", "abq"]), r"tokenizer\.ggml\.merges\[1\]='abq' is not 'LEFT RIGHT'"),
    (dict(merges=["a z"]), r"tokenizer\.ggml\.merges\[0\]='a z' uses 'z'"),
    (dict(vocab=13), r"llama\.vocab_size=13 but tokenizer\.ggml\.tokens has 12"),
])
def test_hostile_metadata_is_refused_naming_key_and_file(tmp_path, kw, message):
  path = _write(tmp_path / "bad.gguf", **kw)
  with pytest.raises(G.GGUFError, match=message) as e:
    G.load(path, name="t")
  assert path in str(e.value)


def test_fifo_and_directory_are_refused_without_blocking(tmp_path):
  fifo = str(tmp_path / "pipe.gguf")
  os.mkfifo(fifo)
  result = {}

  def load():
    try:
      G.load(fifo)
    except G.GGUFError as e:
      result["error"] = str(e)

  t = threading.Thread(target=load, daemon=True)
  t.start()
  t.join(timeout=20)
  if t.is_alive():   # Unblock the reader so the test process can exit, then fail.
    with open(fifo, "wb"):
      pass
    pytest.fail("G.load blocked on a FIFO")
  assert "is a FIFO" in result["error"] and fifo in result["error"]
  with pytest.raises(G.GGUFError, match="is a directory"):
    G.load(str(tmp_path))
