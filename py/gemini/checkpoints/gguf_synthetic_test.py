"""GGUF import of a small synthetic Llama written with gguf's own writer: untied output,
F32/F16/Q8_0 tensors, llama.cpp's Q/K permutation; the imported model's logits equal ours."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, quants

from gemini import config
from gemini.checkpoints import gguf as G
from gemini.model import spec, transformer

CFG = config.ModelConfig(name="synthetic", vocab_size=96, d_model=64, n_layers=2, n_heads=4,
                         n_kv_heads=2, head_dim=16, d_ff=96, max_seq_len=128, rope_base=5000.0,
                         norm_eps=1e-5, activation="silu", tie_embeddings=False, dtype="float32")


def _llama_rows(m, heads):
  """llama.cpp's Q/K row order of rotate-half rows [heads*Dh, C]: within each head, row
  2p + c of llama holds rotate-half row c*Dh/2 + p (pairs adjacent instead of split)."""
  dh = m.shape[0] // heads
  return np.asarray(m)[np.array([h * dh + c * (dh // 2) + q for h in range(heads)
                                 for q in range(dh // 2) for c in range(2)])]


def _write(path, params, cfg, qtype, arch="llama"):
  """Writes `params` as llama.cpp would: [out, in] rows, Q/K permuted, optional quantisation."""
  w = GGUFWriter(str(path), arch)
  w.add_block_count(cfg.n_layers)
  w.add_context_length(cfg.max_seq_len)
  w.add_embedding_length(cfg.d_model)
  w.add_feed_forward_length(cfg.d_ff)
  w.add_head_count(cfg.n_heads)
  w.add_head_count_kv(cfg.n_kv_heads)
  w.add_rope_freq_base(cfg.rope_base)
  w.add_layer_norm_rms_eps(cfg.norm_eps)
  w.add_rope_dimension_count(cfg.head_dim)
  w.add_vocab_size(cfg.vocab_size)

  def put(name, a, q=qtype):
    a = np.ascontiguousarray(a, np.float32)
    if a.ndim == 1 or q == Q.F32:
      w.add_tensor(name, a)
    elif q == Q.F16:
      w.add_tensor(name, a.astype(np.float16))
    else:
      w.add_tensor(name, quants.quantize(a, q), raw_dtype=q)

  d = cfg.d_model
  put("token_embd.weight", params["embed"]["tokens"])
  put("output.weight", params["unembed"].T)
  put("output_norm.weight", params["final_norm"]["scale"])
  for i, l in enumerate(spec.unstack_layers(params, cfg)):
    a, b = l["attn"], f"blk.{i}."
    put(b + "attn_q.weight", _llama_rows(a["wq"].reshape(d, -1).T, cfg.n_heads))
    put(b + "attn_k.weight", _llama_rows(a["wk"].reshape(d, -1).T, cfg.n_kv_heads))
    put(b + "attn_v.weight", a["wv"].reshape(d, -1).T)
    put(b + "attn_output.weight", a["wo"].reshape(-1, d).T)
    put(b + "ffn_gate.weight", l["mlp"]["w_gate"].T)
    put(b + "ffn_up.weight", l["mlp"]["w_up"].T)
    put(b + "ffn_down.weight", l["mlp"]["w_down"].T)
    put(b + "attn_norm.weight", l["attn_norm"]["scale"])
    put(b + "ffn_norm.weight", l["mlp_norm"]["scale"])
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def _params():
  p = jax.tree.map(np.asarray, transformer.init_params(CFG, jax.random.key(0)))
  # Non-trivial norm scales, so a swapped norm would show.
  scale = np.linspace(0.5, 1.5, CFG.d_model, dtype=np.float32)
  p["blocks"][0]["attn_norm"]["scale"] = np.broadcast_to(scale, (CFG.n_layers, CFG.d_model)).copy()
  return p


@pytest.mark.parametrize("qtype,tol", [(Q.F32, 0.0), (Q.F16, 1e-3), (Q.Q8_0, 1e-2)])
def test_roundtrip_through_gguf(tmp_path, qtype, tol):
  params = _params()
  path = tmp_path / "m.gguf"
  _write(path, params, CFG, qtype)
  reader = G.open_reader(str(path))
  cfg = G.read_config(reader, str(path), name="synthetic").replace(dtype="float32")
  assert cfg == CFG
  got = G.load_params(reader, cfg, str(path))
  assert jax.tree.structure(got) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, atol=tol * max(1.0, float(np.abs(b).max())))
  toks = jnp.arange(20, dtype=jnp.int32)[None] % CFG.vocab_size
  ours, _ = transformer.forward(jax.tree.map(jnp.asarray, params), {"tokens": toks}, CFG)
  imported, _ = transformer.forward(jax.tree.map(jnp.asarray, got), {"tokens": toks}, cfg)
  np.testing.assert_allclose(imported, ours, atol=max(1e-5, 20 * tol))


def test_wrong_architecture_and_missing_tensor_are_clear_errors(tmp_path):
  params = _params()
  path = tmp_path / "gpt.gguf"
  _write(path, params, CFG, Q.F32, arch="gpt2")
  with pytest.raises(G.GGUFError, match="general.architecture='gpt2'"):
    G.read_config(G.open_reader(str(path)), str(path))
  path = tmp_path / "short.gguf"
  one = CFG.replace(n_layers=1)
  _write(path, dict(params, blocks=spec.stack_layers(spec.unstack_layers(params, CFG)[:1], one)),
         one, Q.F32)
  reader = G.open_reader(str(path))
  with pytest.raises(G.GGUFError, match=r"tensor .blk\.1\.\w+\.weight. is missing"):
    G.load_params(reader, CFG, str(path))
