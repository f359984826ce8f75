"""Media decoding (independent facts: lossless PNG round trip, an analytic sine through
resampling, frame sampling by duration) and media prompts in the engine: its logits and
greedy tokens equal `transformer.forward` on the same `multimodal.build_batch` layout."""

import base64
import dataclasses
import io
import wave

import jax
import numpy as np
import PIL.Image
import pytest

from gemini.model import multimodal, transformer
from gemini.serve import chat, engine as engine_lib, media as media_lib, testing
from gemini.serve import tokenizer as tokenizer_lib

LIM = media_lib.MediaLimits()


def png(arr: np.ndarray, fmt="PNG") -> bytes:
  buf = io.BytesIO()
  PIL.Image.fromarray(arr).save(buf, fmt)
  return buf.getvalue()


def gif(colors, duration_ms) -> bytes:
  frames = [PIL.Image.fromarray(np.full((16, 16, 3), c, np.uint8)) for c in colors]
  buf = io.BytesIO()
  frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=duration_ms,
                 loop=0)
  return buf.getvalue()


def wav(samples: np.ndarray, rate: int) -> bytes:
  """16-bit PCM through the stdlib writer (independent of the scipy reader)."""
  buf = io.BytesIO()
  pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
  with wave.open(buf, "wb") as w:
    w.setnchannels(1 if pcm.ndim == 1 else pcm.shape[1])
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(pcm.tobytes())
  return buf.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tok = tokenizer_lib.SentencePieceTokenizer(
      testing.train_small_tokenizer(str(tmp_path_factory.mktemp("tok"))))
  cfg = testing.tiny_mm_cfg(tok.vocab_size)
  params = transformer.init_params(cfg, jax.random.key(0))
  return tok, cfg, params


# -- decoding ------------------------------------------------------------------------------

def test_png_is_exact_and_jpeg_close(setup):
  _, cfg, _ = setup
  img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  got = media_lib.decode_image(png(img), cfg.vision, LIM)
  np.testing.assert_allclose(got, img / 255.0, atol=1e-6)
  smooth = np.repeat(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], 16, 0).repeat(3, 2)
  got = media_lib.decode_image(png(smooth, "JPEG"), cfg.vision, LIM)
  assert np.abs(got - smooth / 255.0).mean() < 0.03
  flat = np.full((40, 24, 3), (10, 200, 90), np.uint8)     # resized to 16x16: colour kept
  got = media_lib.decode_image(png(flat), cfg.vision, LIM)
  assert got.shape == (16, 16, 3)
  np.testing.assert_allclose(got, np.broadcast_to(np.array([10, 200, 90]) / 255.0, got.shape),
                             atol=1e-6)


def test_wav_resampled_to_16k_matches_the_analytic_sine(setup):
  _, cfg, _ = setup
  t8 = np.arange(4000) / 8000.0
  got = media_lib.decode_wav(wav(0.5 * np.sin(2 * np.pi * 440 * t8), 8000), cfg.audio, LIM)
  assert got.shape == (8000,) and got.dtype == np.float32
  t16 = np.arange(8000) / 16000.0
  want = 0.5 * np.sin(2 * np.pi * 440 * t16)
  assert np.abs(got[400:-400] - want[400:-400]).max() < 5e-3
  stereo = np.stack([np.full(1600, 0.5), np.full(1600, -0.25)], axis=1)
  got = media_lib.decode_wav(wav(stereo, 16000), cfg.audio, LIM)
  np.testing.assert_allclose(got, np.full(1600, 0.125), atol=1e-4)


def test_video_frames_sampled_by_duration(setup):
  _, cfg, _ = setup
  colors = [(0, 0, 0), (50, 0, 0), (100, 0, 0), (150, 0, 0), (200, 0, 0)]
  data = gif(colors, 500)                                   # 2.5 s
  one = media_lib.decode_video(data, cfg.vision, LIM)       # t = 0, 1, 2 -> frames 0, 2, 4
  np.testing.assert_allclose(one[:, 0, 0, 0] * 255, [0, 100, 200], atol=1)
  two = media_lib.decode_video(data, cfg.vision, media_lib.MediaLimits(video_fps=2.0))
  np.testing.assert_allclose(two[:, 0, 0, 0] * 255, [0, 50, 100, 150, 200], atol=1)
  many = media_lib.decode_video(gif([(i, i, i) for i in range(200)], 10), cfg.vision, LIM)
  np.testing.assert_allclose(many[:, 0, 0, 0] * 255, [0, 100], atol=1)   # 2 s of 10 ms frames
  with pytest.raises(media_lib.MediaError, match="more than max 4 frames"):
    media_lib.decode_video(data, cfg.vision, media_lib.MediaLimits(video_fps=2.0,
                                                                   max_video_frames=4))


@pytest.mark.parametrize("call,match", [
    (lambda c: media_lib.decode_base64("not base64!!"), "not valid base64"),
    (lambda c: media_lib.decode_image(png(np.zeros((8, 8, 3), np.uint8))[:40], c.vision, LIM),
     "corrupt PNG|not a decodable"),
    (lambda c: media_lib.decode_image(b"RIFF....WAVE", c.vision, LIM), "not a decodable image"),
    (lambda c: media_lib.decode_wav(b"\x89PNG\r\n\x1a\n" + b"0" * 64, c.audio, LIM),
     "not a readable WAV"),
    (lambda c: media_lib.decode_wav(wav(np.zeros(16000 * 3), 16000), c.audio,
                                    media_lib.MediaLimits(max_audio_seconds=2)), "3.00 s > max"),
    (lambda c: media_lib.kind_of_mime("video/mp4"), "animated GIF"),
    (lambda c: media_lib.kind_of_mime("text/plain"), "not supported"),
    (lambda c: media_lib.parse_data_url("https://example.com/a.png"), "not a data: URL"),
])
def test_bad_media_is_a_media_error_naming_the_problem(setup, call, match):
  with pytest.raises(media_lib.MediaError, match=match):
    call(setup[1])


# -- the engine ----------------------------------------------------------------------------

class _Backend:
  vision = audio = True

  def __init__(self, cfg):
    self.cfg = cfg


def _layout(tok, cfg, text_parts, media_parts):
  """A user turn alternating text_parts[i], media_parts[i], ..., laid out by chat."""
  reader = chat.MediaReader(_Backend(cfg), LIM)
  text, items = "", []
  for i, t in enumerate(text_parts):
    text += t
    if i < len(media_parts):
      mime, raw = media_parts[i]
      items.append(reader.read_mime(mime, base64.b64encode(raw).decode(), f"part{i}"))
      text += chat.MEDIA_MARK
  job = chat.Job([chat.Turn("user", text, media=items)], None)
  return chat.prompt_layout(job, tok, cfg)


def _reference_logits(params, cfg, ids, layout, seq_len=0):
  return testing.forward_logits(params, cfg, ids, layout, seq_len)


def _prefill(eng, params, ids, layout):
  steps = eng.prefill_steps(params, ids, layout)
  while True:
    try:
      next(steps)
    except StopIteration as done:
      return done.value


def test_media_prompt_logits_and_greedy_equal_forward(setup):
  tok, cfg, params = setup
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  sound = wav(0.3 * np.sin(2 * np.pi * 300 * np.arange(4000) / 8000), 8000)
  video = gif([(255, 0, 0), (0, 255, 0), (0, 0, 255)], 1000)
  ids, layout = _layout(tok, cfg, ["Look at ", " and hear ", " then watch ", " now: describe."],
                        [("image/png", png(img)), ("audio/wav", sound), ("video/gif", video)])
  assert [k for _, k, _ in layout] == ["image", "audio", "video"]
  marks = tok.media_ids()
  for start, kind, arr in layout:                # <media_start> n x <kind> <media_end>
    n = multimodal.num_tokens(kind, arr.shape, cfg)
    assert ids[start - 1] == marks["start"] and ids[start + n] == marks["end"]
    assert set(ids[start:start + n]) == {marks[kind]}
  eng = engine_lib.Engine(params, cfg, engine_lib.EngineConfig(
      n_slots=2, max_len=192, chunk=32, chunk_buckets=(8, 16, 32)))
  lookups = eng.prefix_cache.stats.lookups
  pre = _prefill(eng, params, ids, layout)
  assert eng.prefix_cache.stats.lookups == lookups and pre.cached == 0   # bypassed
  np.testing.assert_allclose(np.asarray(pre.logits), _reference_logits(params, cfg, ids, layout),
                             atol=1e-4, rtol=1e-4)
  # Greedy decoding in slot 1 while slot 0 holds a text prompt: each token equals the argmax
  # of forward over the growing sequence.
  state = eng.init_state()
  state = eng.insert(eng.prefill(params, tok.encode("some other request")), state, 0)
  state = eng.insert(pre, state, 1)
  controls = engine_lib.Controls.idle(2, eng.vocab)
  seq = list(ids)
  for _ in range(4):
    want = _reference_logits(params, cfg, seq, layout, len(ids) + 4)
    state, toks = eng.generate(params, state, controls)
    assert int(toks[1]) == int(np.argmax(want))
    seq.append(int(toks[1]))


def test_different_images_same_text_are_not_mixed_up(setup):
  tok, cfg, params = setup
  eng = engine_lib.Engine(params, cfg, engine_lib.EngineConfig(
      n_slots=1, max_len=64, chunk=32, chunk_buckets=(8, 16, 32)))
  outs = []
  for seed in (2, 3):
    img = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ids, layout = _layout(tok, cfg, ["What is ", "?"], [("image/png", png(img))])
    pre = _prefill(eng, params, ids, layout)
    np.testing.assert_allclose(np.asarray(pre.logits),
                               _reference_logits(params, cfg, ids, layout), atol=1e-4, rtol=1e-4)
    outs.append(np.asarray(pre.logits))
  assert np.abs(outs[0] - outs[1]).max() > 1e-3


@pytest.mark.parametrize("per_frame", [66, 258])
def test_video_takes_tokens_per_frame_from_the_config(setup, per_frame):
  tok, cfg, _ = setup
  cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, tokens_per_frame=per_frame))
  data = gif([(0, 0, 0), (9, 9, 9), (99, 99, 99)], 1000)            # 3 s -> 3 frames at 1 fps
  ids, layout = _layout(tok, cfg, ["Watch ", "."], [("video/gif", data)])
  (start, kind, arr), = layout
  assert kind == "video" and arr.shape == (3, 16, 16, 3)
  assert ids[start:start + 3 * per_frame] == [tok.media_ids()["video"]] * (3 * per_frame)
  assert ids[start + 3 * per_frame] == tok.media_ids()["end"]
