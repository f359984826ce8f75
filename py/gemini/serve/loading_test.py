"""--checkpoint: an Orbax training checkpoint (written by train.checkpoint) served as trained."""

import jax
import numpy as np

from gemini.model import transformer
from gemini.serve import loading, testing
from gemini.train import checkpoint


def test_checkpoint_params_restore_exactly(tmp_path):
  tok_path = testing.train_small_tokenizer(str(tmp_path / "tok"))
  cfg = testing.tiny_cfg(600)
  params = transformer.init_params(cfg, jax.random.key(3))
  ck = checkpoint.Checkpointer(str(tmp_path / "work" / "checkpoints"), async_save=False)
  ck.save(7, {"params": params, "step": np.int32(7)}, {"loader": {}})
  ck.close()
  got, got_cfg, tok = loading.load_checkpoint(str(tmp_path / "work"), cfg, tok_path)
  assert got_cfg.dtype == "float32" and tok.vocab_size == 600
  flat_want = jax.tree_util.tree_leaves_with_path(params)
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
  assert len(flat_got) == len(flat_want)
  for path, want in flat_want:
    np.testing.assert_array_equal(np.asarray(flat_got[path]), np.asarray(want))
