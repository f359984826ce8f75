"""qk_norm end to end: a query/key-RMSNorm model trains, quantises to int4, exports to .gnb
and the native runtime reproduces the JAX int4 forward (logits and greedy tokens)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from csrc.runtime import _runtime
from gemini.config import ModelConfig
from gemini.export import export, gnb
from gemini.model import transformer
from gemini.quant import test_util

CFG = ModelConfig(name="qk_golden", vocab_size=256, d_model=96, n_layers=2, n_heads=4,
                  n_kv_heads=2, head_dim=24, d_ff=160, max_seq_len=128, activation="silu",
                  qk_norm=True, dtype="float32")


def _train(steps=40):
  params = test_util.random_params(CFG, jax.random.key(0))
  opt = optax.adam(3e-3)
  state = opt.init(params)
  text = np.frombuffer(open("/usr/share/common-licenses/GPL-3", "rb").read(), np.uint8)

  @jax.jit
  def step(params, state, batch):
    loss, g = jax.value_and_grad(lambda p: transformer.loss_fn(
        p, {"tokens": batch[:, :-1], "targets": batch[:, 1:]}, CFG)[0])(params)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state, loss

  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    starts = rng.integers(0, len(text) - 65, 4)
    batch = jnp.asarray(np.stack([text[s:s + 65] for s in starts]).astype(np.int32))
    params, state, loss = step(params, state, batch)
    losses.append(float(loss))
  return params, losses


def test_qk_norm_trains_quantises_exports_and_runs_natively(tmp_path):
  params, losses = _train()
  assert losses[-1] < losses[0] - 1.0, losses[::8]            # it learns (ln 256 = 5.5)
  path = str(tmp_path / "qk.gnb")
  q = export.export(path, params, CFG, group_size=32)
  parsed = gnb.read(path)
  assert parsed.config["qk_norm"] is True
  assert {"layers.0.q_norm", "layers.1.k_norm"} <= set(parsed.tensors)
  prompt = [int(t) for t in np.random.default_rng(1).integers(0, CFG.vocab_size, 24)]
  want = np.asarray(test_util.logits(q, prompt, CFG))
  rt = _runtime.Runtime(path, threads=2)
  got = rt.logits(prompt)
  assert np.max(np.abs(got - want)) <= 1e-3 * np.max(np.abs(want))
  assert rt.generate(prompt, 16) == test_util.greedy(q, prompt, CFG, 16)
