"""gguf_writer: a .gnb Nano written as a llama-architecture GGUF (Q4_0 and Q8_0) holds the same
model: the `gguf` package reads the metadata and tensor types llama.cpp expects, the Python
GGUF importer (gemini.checkpoints.gguf) recovers the .gnb's exact int4 values (so the Q/K row
permutation is inverted correctly), and the C++ runtime's logits and tokenizer on the GGUF equal
those on the .gnb. Models llama.cpp's llama architecture cannot express are refused."""

import dataclasses

import jax
import numpy as np
import pytest
from gguf import GGUFReader

from csrc.runtime import _runtime
from gemini.checkpoints import gguf
from gemini.config import ModelConfig
from gemini.export import export, gguf_writer, gnb, tokenizer_blob
from gemini.quant import test_util
from gemini.quant.test_util import random_params

NANO = ModelConfig(name="nano_gguf", vocab_size=49152, d_model=64, n_layers=2, n_heads=4,
                   n_kv_heads=2, head_dim=16, d_ff=96, max_seq_len=128, activation="silu",
                   tie_embeddings=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  src = gguf.find_smollm2_gguf()
  tok = gguf.build_tokenizer(gguf.open_reader(src), src)
  d = tmp_path_factory.mktemp("gguf")
  path = str(d / "nano.gnb")
  export.export(path, random_params(NANO, jax.random.key(3)), NANO, group_size=64,
                tokenizer_kind=gnb.TOK_BPE, tokenizer=tokenizer_blob.bpe_blob(tok), bos_id=1, eos_id=2,
                chat_template="<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
  out = {}
  for kind in (gguf_writer.Q4_0, gguf_writer.Q8_0):
    out[kind] = str(d / f"nano.{kind}.gguf")
    gguf_writer.write_from_gnb(path, out[kind], kind)
  return path, out, tok


def test_metadata_and_tensor_types(exported):
  _, out, _ = exported
  for kind, want in ((gguf_writer.Q4_0, "Q4_0"), (gguf_writer.Q8_0, "Q8_0")):
    r = GGUFReader(out[kind])
    f = lambda k: r.fields[k].contents()
    assert f("general.architecture") == "llama"
    assert (f("llama.block_count"), f("llama.embedding_length"), f("llama.attention.head_count"),
            f("llama.attention.head_count_kv"), f("llama.feed_forward_length")) == (2, 64, 4, 2, 96)
    assert f("tokenizer.ggml.model") == "gpt2" and f("tokenizer.ggml.pre") == "smollm"
    assert len(r.fields["tokenizer.ggml.tokens"].data) == 49152
    assert "<|im_start|>" in f("tokenizer.chat_template")
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == want and types["output.weight"] == want
    assert types["blk.1.ffn_norm.weight"] == "F32"
    assert len(types) == 2 + 1 + 2 * 9  # embed, output, output_norm + 9 per layer


def test_python_importer_recovers_the_model(exported):
  """gemini.checkpoints.gguf (which un-permutes Q/K) + the JAX forward on the written GGUF give
  the C++ runtime's logits on the .gnb: the permutation round-trips."""
  path, out, _ = exported
  prompt = [int(t) for t in np.random.default_rng(1).integers(0, NANO.vocab_size, 16)]
  want = _runtime.Runtime(path).logits(prompt)
  for kind in out.values():
    m = gguf.load(kind)
    got = np.asarray(test_util.logits(m.params, prompt, m.cfg))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max(), err_msg=kind)


def test_runtime_logits_and_tokenizer_equal_on_gnb_and_gguf(exported):
  path, out, tok = exported
  prompt = [int(t) for t in np.random.default_rng(0).integers(0, NANO.vocab_size, 24)]
  ref_rt = _runtime.Runtime(path)
  ref = ref_rt.logits(prompt)
  for kind in out.values():
    rt = _runtime.Runtime(kind)
    np.testing.assert_allclose(rt.logits(prompt), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    text = "The year 2024 was 366 days long; naïve café."
    assert rt.encode(text) == ref_rt.encode(text) == tok.encode(text).ids
    assert rt.config["chat_template"] == ref_rt.config["chat_template"]


def test_models_llama_cannot_express_are_refused(tmp_path):
  for change, msg in ((dict(activation="gelu"), "activation='gelu'"),
                      (dict(logit_softcap=30.0), "logit_softcap=30.0")):
    cfg = dataclasses.replace(NANO, vocab_size=256, **change)
    path = str(tmp_path / "m.gnb")
    export.export(path, random_params(cfg, jax.random.key(0)), cfg)
    with pytest.raises(ValueError, match=msg):
      gguf_writer.write_from_gnb(path, str(tmp_path / "m.gguf"))
