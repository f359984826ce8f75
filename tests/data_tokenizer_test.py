"""SentencePiece training and the reserved special ids, on real bundled text (KJV Bible)."""

import pytest

from gemini.data import sources, tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  docs = sources.bible(150_000)
  path = tokenizer.train([d["text"] for d in docs], str(tmp_path_factory.mktemp("tok")),
                         vocab_size=600, character_coverage=1.0, byte_fallback=True)
  return tokenizer.Tokenizer(path)


def test_vocab_and_fixed_special_ids(tok):
  assert tok.vocab_size == 600
  assert [tok.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<bos>", "<eos>"]
  for i, s in enumerate(tokenizer.SPECIALS):
    assert tok.sp.id_to_piece(4 + i) == s and tok.special(s) == 4 + i


def test_roundtrip_and_specials_are_atomic(tok):
  text = "In the beginning God created the heaven and the earth."
  ids = tok.encode(text)
  assert ids[0] == tokenizer.BOS and ids[-1] == tokenizer.EOS
  assert tok.decode(ids) == text
  # Frequent corpus words compress: far fewer tokens than characters.
  assert len(ids) < len(text) / 2
  chat = "<start_of_turn>user\nHi<end_of_turn><think>hmm</think><image>"
  ids = tok.encode(chat, bos=False, eos=False)
  for s in ("<start_of_turn>", "<end_of_turn>", "<think>", "</think>", "<image>"):
    assert tok.special(s) in ids
  assert tok.decode(ids) == chat


def test_byte_fallback_covers_unseen_characters(tok):
  text = "naïve 日本語 ✓"
  ids = tok.encode(text, bos=False, eos=False)
  assert tokenizer.UNK not in ids
  assert tok.decode(ids) == text
  byte_ids = [i for i in ids if tok.sp.id_to_piece(i).startswith("<0x")]
  assert len(byte_ids) >= len("日本語✓".encode()) - 2
