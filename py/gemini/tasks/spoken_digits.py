"""Spoken digits: 16 kHz speech in, the digit string out, scored exactly on held-out voices.

Data: strings of 1-5 digits (0 spoken "zero" or "oh") synthesised by espeak-ng (English
accents x voice variants, random rate and pitch), flite and festival (speech_synth.py). The
speakers are split: each engine keeps voices that speak only test clips (TEST_VARIANTS,
TEST_FLITE, TEST_FESTIVAL), so the score is on voices never heard in training. Real speech:
the digit-only recordings in Debian's pocketsphinx-testdata (a TIDIGITS utterance, a
"five five" card), word error rate reported. Model: flash_tiny (MoE on layers 1 and 3) with
its audio encoder (log-mel, two stride-2 convolutions: 25 tokens per second) and the task's
closed word vocabulary. Each example is

    <bos> [audio tokens] digits <w1> ... <wn> <eos>        w = zero | one | ... | nine

with the loss on the words after "digits"; evaluation prompts <bos> [audio] digits and
decodes greedily; exact = the words up to <eos> are the clip's digits.

    tools/bazel run //py/gemini/tasks:spoken_digits -- [--steps=N] [--quick]
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import time
from typing import List, Sequence, Tuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from gemini.config import get_config  # noqa: E402
from gemini.eval import report  # noqa: E402
from gemini.eval.tokenizer import WordVocab  # noqa: E402
from gemini.model import multimodal  # noqa: E402
from gemini.tasks import common, speech_synth  # noqa: E402
from gemini.tasks.speech_synth import Voice  # noqa: E402

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
TRAIN_VARIANTS = ("m1", "m2", "m3", "m5", "m6", "m7", "f1", "f2", "f4", "f5", "klatt", "klatt3",
                  "klatt4", "adam", "Andy", "john", "linda", "max", "robert", "steph")
TEST_VARIANTS = ("m4", "m8", "f3", "klatt2", "paul", "belinda")
TRAIN_FLITE, TEST_FLITE = ("kal", "kal16", "awb", "slt"), ("rms",)
TRAIN_FESTIVAL, TEST_FESTIVAL = ("kal_diphone", "cmu_us_slt_arctic_hts"), ("ked_diphone",)
# Festival has two English training voices; the diphone one speaks each training clip at a
# random speed (75-120 %) and F0 mean (80-150 Hz; its default is 105) to stand in for more
# speakers. The held-out ked voice keeps its defaults.
VARIED_FESTIVAL = ("kal_diphone",)
ENGINE_SHARE = {"espeak-ng": 0.7, "flite": 0.15, "festival": 0.15}
CLIP_S = 2.5
REAL = "/usr/share/pocketsphinx/test/data"
# Real recordings whose transcripts are digits only (the rest of the test data is not).
REAL_CLIPS = (("tidigits/dhd.2934z.raw", "two nine three four zero"),
              ("cards/004.wav", "five five"))


def spoken(digits: Sequence[int], rng: np.random.Generator) -> str:
  return " ".join("oh" if d == 0 and rng.random() < 0.3 else WORDS[d] for d in digits)


def vocab() -> WordVocab:
  return WordVocab(["digits"] + list(WORDS))


def speakers(split: str) -> dict:
  """engine -> the voice names of `split` ("train" or "test")."""
  test = split == "test"
  variants = TEST_VARIANTS if test else TRAIN_VARIANTS
  return {"espeak-ng": [f"{a}+{v}" for a in ACCENTS for v in variants],
          "flite": list(TEST_FLITE if test else TRAIN_FLITE),
          "festival": list(TEST_FESTIVAL if test else TRAIN_FESTIVAL)}


def plan(split: str, n: int, seed: int) -> List[Tuple[Voice, List[int], str]]:
  """n (voice, digits, spoken text) drawn for `split`, engines in ENGINE_SHARE proportions."""
  rng = np.random.default_rng([seed, split == "test"])
  names = speakers(split)
  out = []
  for engine, share in ENGINE_SHARE.items():
    for _ in range(int(round(n * share))):
      name = names[engine][rng.integers(len(names[engine]))]
      if engine == "espeak-ng":
        voice = Voice(engine, name, int(rng.integers(130, 211)), int(rng.integers(20, 81)))
      elif name in VARIED_FESTIVAL and split == "train":
        voice = Voice(engine, name, int(rng.integers(75, 121)), int(rng.integers(80, 151)))
      else:
        voice = Voice(engine, name)
      digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(1, 6)))]
      out.append((voice, digits, spoken(digits, rng)))
  return out[:n]


def _synth_group(items) -> list:
  return list(zip(items, speech_synth.speak([(v, t) for v, _, t in items])))


def build(split: str, n: int, seed: int, cache_dir: str, log=print):
  """-> (clips f32 [N, CLIP_S*16k], digits list, speakers list); cached as .npz by content."""
  items = plan(split, n, seed)
  key = hashlib.sha256(json.dumps([(str(v), d, t) for v, d, t in items]).encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, f"{split}-{n}-{key}.npz")
  if os.path.exists(path):
    z = np.load(path, allow_pickle=False)
    digits = [list(map(int, s.split())) for s in z["digits"]]
    return z["clips"].astype(np.float32) / 32767.0, digits, list(z["speakers"])
  # festival is batched per speaker (it starts slowly); the other engines run a process a clip.
  groups, festival = [], {}
  for it in items:
    if it[0].engine == "festival":
      festival.setdefault(it[0].speaker, []).append(it)
    else:
      groups.append([it])
  groups += list(festival.values())
  length = int(CLIP_S * speech_synth.RATE)
  clips, digits, who, dropped = [], [], [], 0
  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    for done, result in enumerate(pool.map(_synth_group, groups)):
      for (voice, ds, _), clip in result:
        if clip.size > length:
          dropped += 1
          continue
        clips.append(np.pad(clip / max(float(np.abs(clip).max()), 1e-6) * 0.9,
                            (0, length - clip.size)))
        digits.append(ds)
        who.append(voice.speaker)
      if done % 500 == 0:
        log(f"[{split}] synthesised {len(clips)}/{n} clips ({time.perf_counter() - t0:.0f} s)")
  log(f"[{split}] {len(clips)} clips of <= {CLIP_S} s ({dropped} longer ones dropped)")
  arr = np.round(np.stack(clips) * 32767).astype(np.int16)
  os.makedirs(cache_dir, exist_ok=True)
  np.savez(path + ".tmp.npz", clips=arr, speakers=np.asarray(who),
           digits=np.asarray([" ".join(map(str, d)) for d in digits]))
  os.replace(path + ".tmp.npz", path)
  return arr.astype(np.float32) / 32767.0, digits, who


def task_config(size: str = "flash_tiny"):
  """flash_tiny with the task's vocabulary; size="small" keeps its audio encoder (width 128, 2
  layers) and narrows the decoder, which only has to read 63 audio tokens out as at most 5
  words, to width 128 in 2 layers with MoE (4 experts top-1) on layer 1."""
  base = get_config("flash_tiny")
  cfg = base.replace(name="flash_tiny_digits", vocab_size=vocab().vocab_size, max_seq_len=96,
                     dtype="float32")
  if size == "flash_tiny":
    return cfg
  if size != "small":
    raise ValueError(f"size={size!r}: expected 'small' or 'flash_tiny'")
  return common.small_decoder(cfg, "flash_tiny_digits_small")


def augment(clips: np.ndarray, rng: np.random.Generator, speed=(0.85, 1.15),
            snr_db=(10.0, 40.0)) -> np.ndarray:
  """f32 [N, L] padded clips -> each one played at a random speed (linear resampling: tempo
  and pitch move together, as a longer or shorter vocal tract would), moved to a random start
  within the padding, scaled by a random gain and given white noise at a random SNR. The
  training voices are few per engine (4 flite, 2 festival); this stands in for speakers."""
  n, length = clips.shape
  out = np.zeros_like(clips)
  for i in range(n):
    x = clips[i]
    loud = np.flatnonzero(x)
    end = int(loud[-1]) + 1 if loud.size else 1
    f = rng.uniform(max(speed[0], end / length), speed[1])       # the result still fits
    y = np.interp(np.arange(0, end, f), np.arange(end), x[:end]).astype(np.float32)
    start = int(rng.integers(0, length - y.size + 1))
    y = y * rng.uniform(0.5, 1.0)
    out[i, start:start + y.size] = y
    power = float(np.mean(y ** 2)) + 1e-12
    noise = np.sqrt(power / 10 ** (rng.uniform(*snr_db) / 10))
    out[i] += rng.normal(0.0, noise, length).astype(np.float32)
  return out


def examples(clips, digits, voc: WordVocab, with_answer: bool):
  head = voc.encode("digits")
  return [[("text", [voc.bos_id]), ("audio", clip),
           ("text", head + (voc.encode(" ".join(WORDS[d] for d in ds)) + [voc.eos_id]
                            if with_answer else []))]
          for clip, ds in zip(clips, digits)]


def transcribe(params, cfg, clips, voc: WordVocab, batch: int = 200) -> List[str]:
  """Greedy transcripts (digit words up to <eos>) of clips [N, L]."""
  exs = examples(clips, [[]] * len(clips), voc, with_answer=False)
  seq = multimodal.sequence_length(exs[0], cfg)
  out = []
  for lo in range(0, len(exs), batch):
    chunk = exs[lo:lo + batch]
    b = multimodal.build_batch(chunk + [chunk[-1]] * (batch - len(chunk)), cfg, seq)
    for row in common.greedy_answers(params, cfg, b, max_new=6)[:len(chunk)]:
      row = list(row)
      out.append(voc.decode(row[:row.index(voc.eos_id)]) if voc.eos_id in row else "<no eos>")
  return out


def word_errors(ref: str, hyp: str) -> int:
  """Levenshtein distance between word sequences (substitutions, insertions, deletions)."""
  r, h = ref.split(), hyp.split()
  d = list(range(len(h) + 1))
  for i, rw in enumerate(r, 1):
    prev, d[0] = d[0], i
    for j, hw in enumerate(h, 1):
      prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
  return d[len(h)]


def real_clips() -> List[Tuple[str, np.ndarray, str]]:
  """(file, 16 kHz f32 clip padded to CLIP_S, transcript) of the digit-only recordings."""
  out = []
  length = int(CLIP_S * speech_synth.RATE)
  for rel, text in REAL_CLIPS:
    path = os.path.join(REAL, rel)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} missing: install Debian package pocketsphinx-testdata")
    if path.endswith(".raw"):      # pocketsphinx raw: 16 kHz mono s16le
      x = speech_synth.trim(np.fromfile(path, "<i2").astype(np.float32) / 32768.0)
    else:
      x = speech_synth.load_16k(path)
    x = x[:length] / max(float(np.abs(x).max()), 1e-6) * 0.9
    out.append((rel, np.pad(x, (0, length - x.size)), text))
  return out


def parse(argv):
  p = common.task_parser(__doc__, "spoken_digits", steps=3000, batch=32, lr=2e-3,
                         quick=dict(steps=40, train_clips=300, test_clips=100))
  p.add_argument("--train_clips", type=int, default=12000)
  p.add_argument("--test_clips", type=int, default=1000)
  p.add_argument("--cache", default=os.path.expanduser("~/.cache/gemini/spoken_digits"))
  p.add_argument("--size", default="flash_tiny", choices=("flash_tiny", "small"),
                 help="the model (task_config)")
  p.add_argument("--augment", default="none", choices=("none", "speed_noise"),
                 help="training clips: random speed 0.85-1.15, start, gain, noise (augment)")
  return common.parse_task(p, argv)


def run(argv=None, log=print) -> dict:
  a = parse(argv)
  missing = speech_synth.missing_engines()
  if missing:
    raise SystemExit(f"spoken_digits: {', '.join(missing)} not installed (Debian packages "
                     "espeak-ng, flite, festival + festvox voices; see tools/apt-packages.txt)")
  out = common.task_out(a, "spoken_digits")
  voc, cfg = vocab(), task_config(a.size)
  xtr, dtr, _ = build("train", a.train_clips, a.seed, a.cache, log)
  xte, dte, ste = build("test", a.test_clips, a.seed, a.cache, log)
  log(f"spoken_digits: {len(xtr)} train / {len(xte)} test clips ({CLIP_S} s, "
      f"{multimodal.sequence_length(examples(xte[:1], dte[:1], voc, False)[0], cfg)} prompt "
      f"tokens); {cfg.name}; {a.steps} steps x {a.batch}")
  train_ex = examples(xtr, dtr, voc, with_answer=True)
  seq = max(multimodal.sequence_length(e, cfg) for e in train_ex)
  rng = np.random.default_rng(a.seed)

  def next_batch(step):
    idx = rng.integers(0, len(train_ex), a.batch)
    if a.augment == "none":
      return multimodal.build_batch([train_ex[i] for i in idx], cfg, seq)
    clips = augment(xtr[idx], rng)
    return multimodal.build_batch(examples(clips, [dtr[i] for i in idx], voc, True), cfg, seq)

  t0 = time.perf_counter()
  params = common.train(cfg, next_batch, a.steps, out, lr=a.lr, seed=a.seed, log=log)
  train_s = time.perf_counter() - t0
  log(f"spoken_digits: parameters in {common.save_params(params, out)}")
  hyps = transcribe(params, cfg, xte, voc)
  refs = [" ".join(WORDS[d] for d in ds) for ds in dte]
  with open(os.path.join(out, "hypotheses.jsonl"), "w") as f:   # every test clip, for analysis
    for who, r, h in zip(ste, refs, hyps):
      f.write(json.dumps({"speaker": who, "ref": r, "hyp": h}) + "\n")
  exact = np.asarray([h == r for h, r in zip(hyps, refs)])
  engines = [s.split(":")[0] for s in ste]
  per_engine = {e: float(exact[[x == e for x in engines]].mean()) for e in ENGINE_SHARE
                if e in engines}
  real = real_clips()
  real_hyps = transcribe(params, cfg, np.stack([c for _, c, _ in real]), voc)
  errs = sum(word_errors(t, h) for (_, _, t), h in zip(real, real_hyps))
  res = {"task": "spoken_digits", "model": cfg.name, "size": a.size, "augment": a.augment,
         "steps": a.steps, "batch": a.batch,
         "train_clips": len(xtr), "test_clips": len(xte), "exact": float(exact.mean()),
         "target": 0.95, "per_engine": per_engine, "train_seconds": round(train_s, 1),
         "test_speakers": sorted(set(ste)),
         "real_speech": [{"file": f, "ref": t, "hyp": h} for (f, _, t), h in zip(real, real_hyps)],
         "real_wer": errs / sum(len(t.split()) for _, _, t in real)}
  common.write_json(os.path.join(out, "results.json"), res)
  report.bar_plot(list(per_engine), list(per_engine.values()), [0.95] * len(per_engine),
                  os.path.join(out, "per_engine.png"),
                  f"Spoken digits, held-out voices: exact {exact.mean():.3f}")
  log(json.dumps({k: v for k, v in res.items() if k != "test_speakers"}))
  return res


if __name__ == "__main__":
  run()
