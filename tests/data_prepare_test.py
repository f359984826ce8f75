"""`prepare` end to end on a small cut of the real bundled corpus (Debian bible-kjv, fortunes,
the stdlib's code, fashion-mnist): shards decode back to the clean text, held-out split is
clean of 13-gram overlap, the loader runs on the manifest, outputs are deterministic."""

import json
import os

import numpy as np
import pytest

from gemini.data import decontaminate, prepare, sources, tokenizer
from gemini.data.loader import Loader, Shard

ARGS = ["--sources=bible,fortunes,code", "--max_mb_per_source=0.04", "--vocab_size=700",
        "--tokenizer_mb=0.2", "--images=6", "--heldout_per_source=3",
        "--max_record_tokens=300"]
MAX_RECORD = 300


def read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(l) for l in f]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("corpus"))
  manifest = prepare.main([f"--out={out}"] + ARGS)
  return out, manifest


def test_manifest_and_shards_decode_to_clean_text(corpus):
  out, m = corpus
  assert set(m["sources"]) == {"bible", "fortunes", "code"} and m["vocab_size"] == 700
  tok = tokenizer.Tokenizer(os.path.join(out, m["tokenizer"]))
  for name, info in m["sources"].items():
    docs = read_jsonl(os.path.join(out, "clean", f"{name}.jsonl"))
    assert info["docs"] == len(docs) > 0
    shards = [Shard(os.path.join(out, p)) for p in info["shards"]]
    records = [np.asarray(s.tokens(i)) for s in shards for i in range(len(s))]
    assert len(records) == info["records"] >= len(docs)
    assert max(len(r) for r in records) <= MAX_RECORD
    # A record starting with <bos> starts a document; the next ones continue it, each
    # repeating the previous record's last token (no next-token pair is lost at a cut).
    joined = []
    for r in records:
      if r[0] == tokenizer.BOS:
        joined.append(r)
      else:
        assert r[0] == joined[-1][-1]
        joined[-1] = np.concatenate([joined[-1], r[1:]])
    assert len(joined) == len(docs)
    assert sum(len(r) for r in joined) == info["tokens"]
    for r, d in list(zip(joined, docs))[:20]:
      assert r[0] == tokenizer.BOS and r[-1] == tokenizer.EOS and r.max() < 700
      assert tok.decode(r) == d["text"].lstrip(" ")
  code = m["sources"]["code"]
  assert code["records"] > code["docs"]   # The stdlib files were really split.
  # Raw docs were written too, and filtering removed something real (short fortunes).
  raw = read_jsonl(os.path.join(out, "docs", "fortunes.jsonl"))
  assert len(raw) > m["sources"]["fortunes"]["docs"]
  assert m["pipeline"]["filters"]["fortunes"]["too_short"] > 0


def test_heldout_is_disjoint_and_decontaminated(corpus):
  out, m = corpus
  held = read_jsonl(os.path.join(out, "heldout", "heldout.jsonl"))
  assert len(held) == m["heldout"]["docs"] > 0
  index = decontaminate.NgramIndex(held)
  held_ids = {h["id"] for h in held}
  for name in m["sources"]:
    for d in read_jsonl(os.path.join(out, "clean", f"{name}.jsonl")):
      assert d["id"] not in held_ids and not index.hits(d["text"])


def test_loader_on_manifest(corpus):
  out, m = corpus
  with Loader.from_manifest(os.path.join(out, "manifest.json"), batch_size=2, seq_len=64,
                            seed=0) as loader:
    for _ in range(5):
      b = loader.next()
      assert b["tokens"].shape == (2, 64) and b["tokens"].max() < 700
      assert np.all(b["segment_ids"] > 0)


def test_multimodal_shard_holds_fashion_mnist(corpus):
  out, m = corpus
  info = m["multimodal"]["fashion_mnist"]
  s = Shard(os.path.join(out, info["shards"][0]))
  images, labels = sources.fashion_mnist(6)
  tok = tokenizer.Tokenizer(os.path.join(out, m["tokenizer"]))
  assert len(s) == 6
  for i in range(6):
    rec = s.record(i)
    (media,) = rec["media"]
    assert media["modality"] == "image" and media["placement"] == 2
    np.testing.assert_array_equal(media["array"], images[i][:, :, None])
    ph = rec["tokens"][2:2 + media["num_placeholders"]]
    assert np.all(ph == tokenizer.special_id("<image>"))
    caption = tok.decode(rec["tokens"][3 + media["num_placeholders"]:])
    assert caption == f"A photo of a {sources.FASHION_LABELS[labels[i]]}."


def test_prepare_is_deterministic(corpus, tmp_path):
  out, m = corpus
  m2 = prepare.main([f"--out={tmp_path}"] + ARGS)
  assert m2 == m
  for rel in [m["tokenizer"]] + [p for info in m["sources"].values() for p in info["shards"]]:
    with open(os.path.join(out, rel), "rb") as a, open(os.path.join(tmp_path, rel), "rb") as b:
      assert a.read() == b.read(), rel
