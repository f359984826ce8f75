"""Native multimodal input: encoders, log-mel vs NumPy, layout/scatter, bidir ids, full model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini import family
from gemini.config import AudioConfig, get_config
from gemini.model import audio, audio_reference, multimodal, spec, video, vision

F32 = dict(dtype="float32")


def _cfg(name="flash_tiny", **vision_kw):
  cfg = get_config(name).replace(**F32)
  if vision_kw:
    cfg = cfg.replace(vision=cfg.vision.__class__(**{**cfg.vision.__dict__, **vision_kw}))
  return cfg


@functools.lru_cache(maxsize=None)
def _params(cfg, seed=0):
  """Just the trees embed_sequence reads: embed, vision, audio (jitted init, cached)."""
  return jax.jit(functools.partial(_init, cfg))(jax.random.PRNGKey(seed))


def _init(cfg, key):
  k = jax.random.split(key, 3)
  return {"embed": {"tokens": jax.random.normal(k[0], (cfg.vocab_size, cfg.d_model)) * 0.05},
          **spec.init_tree(spec.vision_params(cfg.vision, cfg.d_model), k[1]),
          **spec.init_tree(spec.audio_params(cfg.audio, cfg.d_model), k[2])}


def _media(cfg, seed=0, frames=4):
  rng = np.random.default_rng(seed)
  v = cfg.vision
  image = rng.uniform(size=(v.image_size, v.image_size, v.channels)).astype(np.float32)
  t = np.arange(cfg.audio.sample_rate) / cfg.audio.sample_rate          # 1 second
  clip = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
  vid = rng.uniform(size=(frames, v.image_size, v.image_size, v.channels)).astype(np.float32)
  return image, clip, vid


def _example(cfg, seed=0, frames=4):
  image, clip, vid = _media(cfg, seed, frames)
  return [("text", [5, 6, 7]), ("image", image), ("text", [8, 9]), ("audio", clip),
          ("text", [10]), ("video", vid), ("text", [11, 12, 13])]


def _jit(fn, cfg):
  """fn(params, x, cfg) jitted for a fixed cfg (one compile instead of op-by-op dispatch)."""
  return jax.jit(functools.partial(fn, cfg=cfg))


# ---- log-mel --------------------------------------------------------------------------------

@pytest.mark.parametrize("acfg", [AudioConfig(), AudioConfig(n_mels=40, n_fft=400, win_length=400)])
def test_log_mel_matches_numpy_reference(acfg):
  rng = np.random.default_rng(1)
  t = np.arange(16000 + 37) / 16000.0                 # not a multiple of the hop
  waves = np.stack([0.5 * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.standard_normal(t.size),
                    0.1 * rng.standard_normal(t.size)]).astype(np.float32)
  got = np.asarray(audio.log_mel(jnp.asarray(waves), acfg))
  assert got.shape == (2, 100, acfg.n_mels)
  for i in range(2):
    np.testing.assert_allclose(got[i], audio_reference.log_mel_reference(waves[i], acfg), atol=1e-4)


def test_mel_filterbank_matches_reference_and_has_no_empty_filter():
  acfg = AudioConfig()
  fb = audio.mel_filterbank(acfg)
  np.testing.assert_allclose(fb, audio_reference.filterbank_reference(acfg), atol=1e-6)
  assert np.all(fb.sum(axis=0) > 0)


# ---- pooling and encoders -------------------------------------------------------------------

def test_pool_matrix_square_equals_block_mean():
  x = np.random.default_rng(0).standard_normal((8 * 8, 3))
  got = vision.pool_matrix(8, 16) @ x
  want = x.reshape(4, 2, 4, 2, 3).mean(axis=(1, 3)).reshape(16, 3)
  np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("tokens", [258, 66, 5, 1])
def test_pool_matrix_non_square_counts(tokens):
  grid = 32
  w = vision.pool_matrix(grid, tokens)
  assert w.shape == (tokens, grid * grid)
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
  s = int(np.sqrt(tokens))
  x = np.random.default_rng(0).standard_normal((grid, grid))
  # The last r tokens are horizontal-band means of the whole image.
  for b in range(tokens - s * s):
    r = tokens - s * s
    rows = slice(b * grid // r, -(-(b + 1) * grid // r))
    np.testing.assert_allclose(w[s * s + b] @ x.reshape(-1), x[rows].mean(), atol=1e-6)


def test_encoder_param_counts_by_hand():
  # flash_tiny vision: patch 8*8*3 -> 128 (+bias), 16 patches; 2 blocks of width 128, hidden
  # 512: 2*128 norms + 4*128*128 attn + 2*128*512 mlp; final norm; proj 128 -> 256.
  cfg = get_config("flash_tiny")
  block = 2 * 128 + 4 * 128 * 128 + 2 * 128 * 512
  assert family.vision_params(cfg.vision, cfg.d_model) == (
      192 * 128 + 128 + 16 * 128 + 2 * block + 128 + 128 * 256)
  # audio: conv1 3*80*128 (+bias), conv2 3*128*128 (+bias), the same 2 blocks, norm, proj.
  assert family.audio_params(cfg.audio, cfg.d_model) == (
      3 * 80 * 128 + 128 + 3 * 128 * 128 + 128 + 2 * block + 128 + 128 * 256)


def test_encoder_param_tree_paths_follow_family_doc():
  cfg = _cfg()
  p = _params(cfg)
  assert sorted(p["vision"]) == ["final_norm", "layers", "patch_bias", "patch_embed", "pos_embed",
                                 "proj"]
  assert sorted(p["audio"]) == ["conv1", "conv1_bias", "conv2", "conv2_bias", "final_norm",
                                "layers", "proj"]
  blk = p["audio"]["layers"]                       # stacked over the encoder's blocks
  assert blk["attn"]["wq"].shape == (2, 128, 4, 32) and blk["attn"]["wo"].shape == (2, 4, 32, 128)
  assert sorted(blk) == ["attn", "mlp", "norm1", "norm2"] and sorted(blk["mlp"]) == ["w_down", "w_up"]


def test_encoder_output_shapes():
  cfg = _cfg()
  p = _params(cfg)
  image, clip, vid = _media(cfg)
  shape = lambda f, x: jax.eval_shape(functools.partial(f, cfg=cfg), p, x).shape
  assert shape(vision.image_tokens, image[None]) == (1, 16, cfg.d_model)
  assert shape(audio.audio_tokens, clip[None]) == (1, 25, cfg.d_model)
  assert shape(video.video_tokens, vid[None]) == (1, 4 * 4, cfg.d_model)


def test_video_frames_encoded_like_images():
  cfg = _cfg(tokens_per_frame=2)
  p = _params(_cfg())          # encoder params do not depend on tokens_per_frame
  _, _, vid = _media(cfg, frames=3)
  out = _jit(video.video_tokens, cfg)(p, vid[None])[0]
  one = jax.jit(lambda pv, im: vision.encode_images(pv, im, cfg.vision, 2))
  for f in range(3):
    np.testing.assert_allclose(out[2 * f:2 * f + 2], one(p["vision"], vid[f][None])[0], atol=1e-5)


def test_bad_image_shape_names_the_field():
  cfg = _cfg()
  with pytest.raises(ValueError, match="image_size"):
    vision.image_tokens(_params(cfg), jnp.zeros((1, 16, 16, 3)), cfg)


# ---- layout, scatter, bidir ids -------------------------------------------------------------

def test_embed_sequence_scatters_encoder_outputs_and_bidir_ids():
  cfg = _cfg()
  p = _params(cfg)
  ex = _example(cfg)
  seq_len = multimodal.sequence_length(ex, cfg)
  assert seq_len == 3 + 16 + 2 + 25 + 1 + 16 + 3
  batch = multimodal.build_batch([ex, ex[:3]], cfg, seq_len + 2)
  x, bidir = _jit(multimodal.embed_sequence, cfg)(p, batch)
  x, bidir = np.asarray(x), np.asarray(bidir)
  image, clip, vid = _media(cfg)
  img_tok = np.asarray(_jit(vision.image_tokens, cfg)(p, image[None]))[0]
  aud_tok = np.asarray(_jit(audio.audio_tokens, cfg)(p, clip[None]))[0]
  vid_tok = np.asarray(_jit(video.video_tokens, cfg)(p, vid[None]))[0]
  emb = np.asarray(p["embed"]["tokens"])
  # Row 0: text 0-2 | image 3-18 | text 19-20 | audio 21-45 | text 46 | video 47-62 | text 63-65
  want_bidir = np.zeros(seq_len + 2, np.int32)
  want_bidir[3:19], want_bidir[21:46], want_bidir[47:63] = 1, 2, 3
  np.testing.assert_array_equal(bidir[0], want_bidir)
  np.testing.assert_allclose(x[0, 3:19], img_tok, atol=1e-5)
  np.testing.assert_allclose(x[0, 21:46], aud_tok, atol=1e-5)
  np.testing.assert_allclose(x[0, 47:63], vid_tok, atol=1e-5)
  for s, tok in [(0, 5), (2, 7), (19, 8), (46, 10), (63, 11), (65, 13)]:
    np.testing.assert_allclose(x[0, s], emb[tok], atol=1e-7)
  # Row 1 (text, image, text) uses the second image (index 1) and has id 1 there only.
  np.testing.assert_array_equal(bidir[1, 3:19], 1)
  assert bidir[1, :3].sum() == 0 and bidir[1, 19:].sum() == 0
  np.testing.assert_allclose(x[1, 3:19], img_tok, atol=1e-5)   # same image content
  assert batch["images"].shape[0] == 2 and batch["media_index"][1, 0] == 1
  # Padding and loss mask: no loss on predicting media placeholders or padding.
  np.testing.assert_array_equal(batch["segment_ids"][0], [1] * seq_len + [0, 0])
  assert batch["loss_mask"][0, 2] == 0 and batch["loss_mask"][0, 1] == 1
  assert batch["loss_mask"][0, 18] == 1 and batch["targets"][0, 18] == 8
  assert batch["loss_mask"][0, seq_len - 1:].sum() == 0


@pytest.mark.parametrize("tpf_a,tpf_b", [(4, 1), (258, 66)])
def test_tokens_per_frame_sets_sequence_length(tpf_a, tpf_b):
  frames = 4
  lens = {}
  for tpf in (tpf_a, tpf_b):
    cfg = _cfg(tokens_per_frame=tpf)
    _, _, vid = _media(cfg, frames=frames)
    ex = [("text", [1, 2]), ("video", vid), ("text", [3])]
    lens[tpf] = multimodal.sequence_length(ex, cfg)
    assert lens[tpf] == 3 + frames * tpf
    batch = multimodal.build_batch([ex], cfg, lens[tpf])
    multimodal.validate_batch(batch, cfg)
    assert batch["media_len"][0, 0] == frames * tpf and batch["media_start"][0, 0] == 2
    x, bidir = jax.eval_shape(_jit(multimodal.embed_sequence, cfg), _params(_cfg()), batch)
    assert x.shape == (1, lens[tpf], cfg.d_model) and bidir.shape == (1, lens[tpf])
  assert lens[tpf_a] - lens[tpf_b] == frames * (tpf_a - tpf_b)


def test_embed_sequence_gradients_reach_every_encoder_param():
  cfg = _cfg()
  p = _params(cfg)
  ex = _example(cfg)
  batch = multimodal.build_batch([ex], cfg, multimodal.sequence_length(ex, cfg))
  # x rows have unit-scale entries: w ~ 1/sqrt(D) keeps x @ w ~ N(0, 1), so tanh does not
  # saturate (a saturated tanh has exactly zero gradient in f32).
  w = jax.random.normal(jax.random.PRNGKey(5), (cfg.d_model,)) * cfg.d_model ** -0.5

  def loss(p):
    x, _ = multimodal.embed_sequence(p, batch, cfg)
    return jnp.mean(jnp.tanh(x @ w))

  grads = jax.jit(jax.grad(loss))(p)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), path
    if "embed" not in jax.tree_util.keystr(path):
      assert np.any(g != 0), jax.tree_util.keystr(path)


def test_layout_errors_name_key_and_value():
  cfg = _cfg()
  p = _params(cfg)
  ex = _example(cfg)
  batch = multimodal.build_batch([ex], cfg, multimodal.sequence_length(ex, cfg))
  bad = dict(batch, media_len=batch["media_len"] + 1)
  with pytest.raises(ValueError, match=r"media_len\[0,0\]=17"):
    multimodal.embed_sequence(p, bad, cfg)
  no_audio = {k: v for k, v in batch.items() if k != "audio"}
  with pytest.raises(ValueError, match="no 'audio' array"):
    multimodal.embed_sequence(p, no_audio, cfg)
  with pytest.raises(ValueError, match="vision.enabled=False"):
    multimodal.build_batch([ex], get_config("nano_tiny"), 100)
  with pytest.raises(ValueError, match="seq_len=10"):
    multimodal.build_batch([ex], cfg, 10)
