"""Task data against independent checks (the IDX bytes, the published class balance, the
kv sequences' invariants)."""

import gzip
import wave

import numpy as np
import pytest

import jax

from gemini.model import transformer
from gemini.tasks import (common, fashion_mnist, interleaved, kv_retrieval, speech_synth, spoken_digits,
                          video)
from gemini.tasks.speech_synth import Voice


def test_idx_reader_matches_raw_bytes_and_counts():
  x, y = fashion_mnist.load("test")
  assert x.shape == (10000, 28, 28) and y.shape == (10000,)
  with gzip.open(f"{fashion_mnist.ROOT}/t10k-images-idx3-ubyte.gz") as f:
    raw = f.read()
  np.testing.assert_array_equal(x[1].ravel(), np.frombuffer(raw[16 + 784:16 + 2 * 784], np.uint8))
  assert np.bincount(y).tolist() == [1000] * 10          # the published balanced test set
  xt, _ = fashion_mnist.load("train")
  assert xt.shape == (60000, 28, 28)


def test_augment_moves_each_image_by_at_most_two_pixels_or_mirrors_it():
  rng = np.random.default_rng(0)
  imgs = np.zeros((200, 28, 28), np.uint8)
  imgs[:, 10, 7] = 255                                   # one lit pixel, off-centre
  out = fashion_mnist.augment(imgs, rng)
  seen_flip = seen_plain = False
  for o in out:
    (y,), (x,) = np.nonzero(o)
    assert abs(y - 10) <= 2
    if abs(x - 7) <= 2:
      seen_plain = True
    else:
      assert abs(x - (27 - 7)) <= 2                      # mirrored, then shifted
      seen_flip = True
  assert seen_flip and seen_plain
  assert out.dtype == np.uint8 and out.shape == imgs.shape


def test_random_erasing_changes_one_rectangle_in_about_half_the_images():
  rng = np.random.default_rng(1)
  imgs = np.zeros((400, 28, 28), np.uint8)
  out = imgs.copy()
  fashion_mnist.erase_rectangles(out, rng)
  changed = 0
  for o in out:
    ys, xs = np.nonzero(o)
    if ys.size == 0:
      continue
    changed += 1
    box = o[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    # Noise is uniform over 0..255, so a few zeros inside the box are expected, not more.
    assert (box > 0).mean() > 0.9
    assert box.size <= 0.4 * 784 * 1.15 + 28             # at most 40 % (rounding + clipping)
  assert 150 < changed < 250                             # p = 0.5 of 400


def test_captions_round_trip_through_the_vocabulary():
  voc = fashion_mnist.vocab()
  for c in range(10):
    text = fashion_mnist.caption(c)
    assert voc.decode(voc.encode(text)) == text
  assert fashion_mnist.caption(9) == "an ankle boot"


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0, -1.0])
def test_kv_example_answer_is_the_queried_keys_value(depth):
  lay = kv_retrieval.Layout()
  rng = np.random.default_rng(3)
  for _ in range(20):
    seq, pos, ans, needle = kv_retrieval.make_example(rng, lay, 256, 8, depth, queries=3)
    assert len(seq) == 256 and pos[-1] == 255 and len(pos) == len(ans) == 3
    for p, a in zip(pos, ans):
      assert seq[p - 1] == kv_retrieval.QUERY and (p == 255 or seq[p + 1] == a)
      where = np.flatnonzero(seq[:pos[0] - 1] == seq[p])
      assert len(where) == 1                              # each key occurs once in the context
      assert seq[where[0] + 1] == a and lay.val0 <= a < lay.fill0
    assert len(set(seq[p] for p in pos)) == 3             # three different pairs are asked
    assert seq[needle] == seq[pos[-1]]                    # the last question is the needle
    if depth >= 0:
      assert abs((needle - 1) / (256 - 9 - 2) - depth) < 0.02


def test_kv_repeats_supervise_each_value_whose_key_came_before():
  lay = kv_retrieval.Layout()
  rng = np.random.default_rng(4)
  for _ in range(20):
    seq, pos, ans, _ = kv_retrieval.make_example(rng, lay, 256, 8, queries=2, repeats=3)
    body_end = pos[0] - 1                                 # where the questions start
    assert len(pos) == 2 + 8 * 2                          # two questions, two repeats a pair
    for p in pos:
      assert lay.key0 <= seq[p] < lay.val0                # a key, predicting the value after it
      earlier = np.flatnonzero(seq[:min(p, body_end)] == seq[p])
      assert earlier.size >= 1 and all(seq[e + 1] == (seq[p + 1] if p + 1 < 256 else ans[-1])
                                        for e in earlier)
    keys = seq[1:body_end][(seq[1:body_end] >= lay.key0) & (seq[1:body_end] < lay.val0)]
    assert sorted(np.unique(keys, return_counts=True)[1]) == [3] * 8
  with pytest.raises(ValueError, match="repeats=1"):
    kv_retrieval.make_example(rng, lay, 256, 8, depth=0.5, repeats=2)


def test_kv_copy_batch_supervises_only_what_content_matching_predicts():
  lay = kv_retrieval.Layout()
  b = kv_retrieval.make_copy_batch(np.random.default_rng(5), lay, 64, 64)
  offsets = set()
  for toks, tgt, mask in zip(b["tokens"], b["targets"], b["loss_mask"]):
    assert toks[0] == kv_retrieval.BOS and np.array_equal(toks[1:], tgt[:-1])
    sup = np.flatnonzero(mask)
    assert sup.size >= 3 and np.all(np.diff(sup) == 1)  # one contiguous run: run[1:] of copy 2
    for p in sup:
      earlier = np.flatnonzero(toks[:sup[0]] == toks[p])  # the same token before the copy
      assert earlier.size == 1 and lay.key0 <= toks[p] < lay.fill0
      assert tgt[earlier[0]] == tgt[p]                    # what followed it then follows now
      offsets.add(int(p - earlier[0]))
  assert len(offsets) > 10                                # the copy distance varies


def test_saved_params_reload_exactly_and_another_config_is_refused_by_name(tmp_path):
  lay = kv_retrieval.Layout()
  cfg = kv_retrieval.task_config(lay, 128)
  params = transformer.init_params(cfg, jax.random.key(3))
  path = common.save_params(params, str(tmp_path))
  back = common.load_params(path, cfg)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match=r"params\.npz: parameter .* has shape"):
    common.load_params(path, kv_retrieval.task_config(kv_retrieval.Layout(n_keys=64), 128))


@pytest.mark.parametrize("voice", [Voice("espeak-ng", "en-gb+m3", 150, 40), Voice("flite", "rms"),
                                   Voice("festival", "ked_diphone")])
def test_each_engine_speaks_longer_for_more_words(voice):
  texts = ["two nine three four oh", "five"]
  clips = speech_synth.synthesize(voice, texts)
  assert len(clips) == 2 and all(c.dtype == np.float32 for c in clips)
  assert clips[0].size > 2 * clips[1].size                  # five words last longer than one
  assert 0.3 < clips[1].size / speech_synth.RATE < 1.5


def _median_f0(x, rate=speech_synth.RATE):
  """Median autocorrelation pitch (60-400 Hz) of x's loud 64 ms frames."""
  f0 = []
  for i in range(0, x.size - 1024, 512):
    frame = x[i:i + 1024]
    if np.abs(frame).max() < 0.2 * np.abs(x).max():
      continue
    ac = np.correlate(frame, frame, "full")[1023:]
    lo, hi = rate // 400, rate // 60
    f0.append(rate / (lo + np.argmax(ac[lo:hi])))
  return float(np.median(f0))


def test_festival_diphone_rate_and_pitch_change_duration_and_f0_for_one_clip_only():
  kal = Voice("festival", "kal_diphone")
  text = "one two three"
  plain, slow_high, again = speech_synth.speak(
      [(kal, text), (Voice("festival", "kal_diphone", rate=70, pitch=150), text), (kal, text)])
  assert slow_high.size > 1.25 * plain.size                 # Duration_Stretch 1/0.7
  assert _median_f0(slow_high) > 1.2 * _median_f0(plain)    # F0 mean 150 Hz vs 105
  np.testing.assert_array_equal(again, plain)               # the next clip is back to defaults
  with pytest.raises(ValueError, match="cmu_us_slt_arctic_hts"):
    speech_synth.speak([(Voice("festival", "cmu_us_slt_arctic_hts", rate=90), text)])


@pytest.mark.parametrize("rate", [8000, 22050, 32000, 48000])
def test_wav_loads_at_16k_with_its_pitch_and_duration(rate, tmp_path):
  """A 440 Hz tone written by the stdlib wave module at `rate` comes back at 16 kHz with the
  same duration and its spectral peak at 440 Hz."""
  t = np.arange(rate) / rate
  path = str(tmp_path / "tone.wav")
  with wave.open(path, "wb") as w:
    w.setnchannels(2)
    w.setsampwidth(2)
    w.setframerate(rate)
    tone = np.round(0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    w.writeframes(np.stack([tone, tone], 1).tobytes())
  x = speech_synth.load_16k(path)
  assert abs(x.size - speech_synth.RATE) <= 2
  peak = np.argmax(np.abs(np.fft.rfft(x))) * speech_synth.RATE / x.size
  assert abs(peak - 440) < 2
  assert 0.45 < np.abs(x).max() < 0.55


def test_trim_keeps_the_speech_and_50ms_either_side():
  x = np.zeros(16000, np.float32)
  x[4000:6000] = np.sin(np.arange(2000) / 5.0)
  y = speech_synth.trim(x)
  assert abs(y.size - (2000 + 2 * 800)) <= 2


def test_test_speakers_never_speak_in_training():
  train = {v.speaker for v, _, _ in spoken_digits.plan("train", 3000, 0)}
  test = {v.speaker for v, _, _ in spoken_digits.plan("test", 600, 0)}
  assert train and test and not train & test
  assert {s.split(":")[0] for s in test} == set(speech_synth.ENGINES)


def test_spoken_text_says_the_digits():
  rng = np.random.default_rng(0)
  for _, digits, text in spoken_digits.plan("train", 200, 1):
    words = text.split()
    assert [0 if w == "oh" else spoken_digits.WORDS.index(w) for w in words] == digits
  voc = spoken_digits.vocab()
  assert voc.decode(voc.encode("digits one two")) == "digits one two"


def test_speed_noise_augment_keeps_each_clip_in_its_frame_and_stretches_it():
  rng = np.random.default_rng(0)
  length, n = 16000, 64
  clips = np.zeros((n, length), np.float32)
  t = np.arange(8000) / 16000
  clips[:, :8000] = 0.5 * np.sin(2 * np.pi * 440 * t)          # 0.5 s of 440 Hz, then silence
  # No audible noise: the tone itself is measured.
  out = spoken_digits.augment(clips, rng, snr_db=(200.0, 200.0))
  assert out.shape == clips.shape and out.dtype == np.float32
  loud = [np.flatnonzero(np.abs(o) > 1e-3) for o in out]
  spans = np.array([l[-1] - l[0] + 1 for l in loud])
  assert np.all(spans >= 8000 / 1.15 - 2) and np.all(spans <= 8000 / 0.85 + 2)
  assert spans.std() > 100                                        # speeds differ clip to clip
  assert len({int(l[0]) for l in loud}) > n // 2                  # and so do the starts
  peaks = np.abs(out).max(axis=1)
  assert np.all(peaks <= 0.5 + 1e-3) and np.all(peaks >= 0.25 - 1e-2)
  clean = spoken_digits.augment(clips, np.random.default_rng(1), snr_db=(200.0, 200.0))
  noisy = spoken_digits.augment(clips, np.random.default_rng(1), snr_db=(20.0, 20.0))
  noise = noisy - clean                          # the same draws: only the noise differs
  snr = 10 * np.log10(np.sum(clean ** 2, axis=1) / np.sum(noise ** 2, axis=1))
  spoken = np.array([np.sum(np.abs(c) > 1e-3) for c in clean])
  np.testing.assert_allclose(snr - 10 * np.log10(spoken / length), 20.0, atol=0.3)


def test_word_errors_is_levenshtein_on_words():
  assert spoken_digits.word_errors("one two three", "one two three") == 0
  assert spoken_digits.word_errors("one two three", "one three") == 1
  assert spoken_digits.word_errors("one two", "four one two five") == 2
  assert spoken_digits.word_errors("five five", "") == 2


def _centroid(frame):
  m = frame[..., 0]
  rows, cols = np.indices(m.shape)
  return np.array([(rows * m).sum(), (cols * m).sum()]) / m.sum()


def test_video_clip_first_sprite_moves_the_way_the_answer_says():
  """On a black background a one-sprite clip's centre of mass moves in the answer's direction
  every frame, and the sprite is there from frame 0."""
  sx, sy = video.sprites("test", 200)
  bg = [np.zeros((80, 80), np.float32)]
  seen = set()
  for seed in range(200):
    clip = video.make_clip(np.random.default_rng(seed), bg, sx, sy)
    if clip.count != 1:
      continue
    assert clip.frames.shape == (video.FRAMES, video.SIZE, video.SIZE, 1)
    assert clip.frames[0].sum() > 0
    steps = np.diff([_centroid(f) for f in clip.frames], axis=0)
    want = np.array(video.MOVES[clip.move])
    assert np.all(steps @ want >= 1.5) and np.all(np.abs(steps @ want[::-1]) < 0.5)
    assert video.answer(clip, "which first") == fashion_mnist.NAMES[clip.first]
    seen.add(clip.move)
  assert seen == set(video.MOVES)


def test_video_answers_cover_every_count_and_round_trip():
  sx, sy = video.sprites("test", 200)
  bg = [np.zeros((64, 64), np.float32)]
  counts = set()
  for seed in range(60):
    clip = video.make_clip(np.random.default_rng(seed), bg, sx, sy)
    counts.add(clip.count)
    assert video.answer(clip, "how many") == video.COUNTS[clip.count - 1]
    assert 1 <= clip.count <= 4
  assert counts == {1, 2, 3, 4}
  voc = video.vocab()
  for q in video.QUESTIONS:
    assert voc.decode(voc.encode(q)) == q


def test_video_training_example_answers_every_question_each_ended_by_eos():
  sx, sy = video.sprites("test", 50)
  clip = video.make_clip(np.random.default_rng(0), [np.zeros((64, 64), np.float32)], sx, sy)
  voc = video.vocab()
  qs = ["which way", "how many", "which first"]
  parts = video.example(clip, qs, voc, True)
  assert [k for k, _ in parts] == ["text", "video", "text"] and parts[0][1] == [voc.bos_id]
  tail = parts[2][1]
  ends = [i for i, t in enumerate(tail) if t == voc.eos_id]
  assert len(ends) == 3 and ends[-1] == len(tail) - 1
  for q, lo, hi in zip(qs, [0] + [e + 1 for e in ends[:-1]], ends):
    assert voc.decode(tail[lo:hi]) == f"{q} {video.answer(clip, q)}"
  assert video.example(clip, ["how many"], voc, False)[2][1] == voc.encode("how many")


def test_interleaved_answers_need_the_image_and_the_question():
  """yes/no questions name the image's class half the time; the answer is yes exactly then;
  every answer is in the vocabulary."""
  _, labels = fashion_mnist.load("test")
  qs = interleaved.questions()
  assert len({t for _, _, t in qs}) == len(qs) == 11
  rng = np.random.default_rng(0)
  yes = no = what = 0
  voc = interleaved.vocab()
  for _ in range(3000):
    i, q, ans = interleaved.draw(rng, labels)
    kind, asked, _ = qs[q]
    voc.encode(ans)
    if kind == "what":
      assert ans == fashion_mnist.NAMES[labels[i]]
      what += 1
    else:
      assert ans == ("yes" if asked == labels[i] else "no")
      yes, no = yes + (ans == "yes"), no + (ans == "no")
  assert abs(yes - no) < 0.1 * (yes + no) and 700 < what < 1100
