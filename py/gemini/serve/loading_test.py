"""--checkpoint: an Orbax training checkpoint (written by train.checkpoint) served as trained,
with the model config and tokenizer the checkpoint records."""

import jax
import numpy as np
import pytest

from gemini.model import transformer
from gemini.serve import loading, testing, tokenizer as tokenizer_lib
from gemini.train import checkpoint


def _save(directory, cfg, params, tok_path):
  ck = checkpoint.Checkpointer(directory, async_save=False)
  ck.save(7, {"params": params, "step": np.int32(7)}, {"loader": {}},
          model=checkpoint.describe_model(cfg, tok_path))
  ck.close()


def test_checkpoint_restores_exactly_from_its_own_description(tmp_path):
  tok_path = testing.train_small_tokenizer(str(tmp_path / "tok"))
  cfg = testing.tiny_cfg(600)
  params = transformer.init_params(cfg, jax.random.key(3))
  _save(str(tmp_path / "work" / "checkpoints"), cfg, params, tok_path)
  got, got_cfg, tok = loading.load_checkpoint(str(tmp_path / "work"))
  assert got_cfg == cfg.replace(dtype="float32") and tok.vocab_size == 600
  # The tokenizer is the one trained, from the bytes the checkpoint carries.
  text = "hello world, the quick brown fox"
  assert tok.encode(text) == tokenizer_lib.SentencePieceTokenizer(tok_path).encode(text)
  flat_want = jax.tree_util.tree_leaves_with_path(params)
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
  assert len(flat_got) == len(flat_want)
  for path, want in flat_want:
    np.testing.assert_array_equal(np.asarray(flat_got[path]), np.asarray(want))


def test_checkpoint_without_tokenizer_names_the_missing_flag(tmp_path):
  cfg = testing.tiny_cfg(600)
  _save(str(tmp_path / "checkpoints"), cfg, transformer.init_params(cfg, jax.random.key(0)), None)
  with pytest.raises(ValueError, match="records no tokenizer; give --tokenizer"):
    loading.load_checkpoint(str(tmp_path))
