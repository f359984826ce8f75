"""Interleaved image + speech: a Fashion-MNIST image and a spoken question about it.

The 1.0 report's modality-combination case: the answer needs both inputs. Each prompt is an
image followed by a question spoken by a text-to-speech voice (speech_synth.py):

    <bos> [image tokens] [audio tokens of the question] answer <words> <eos>
      "what is this"             -> the class name ("sneaker")
      "is this a <class name>"   -> yes | no   (the spoken class is the image's half the time)

so the model must read the image and hear which class the question names. Images: the
Fashion-MNIST train / test splits; voices: spoken_digits' train / test speakers (the test
questions are spoken only by voices never heard in training). Model: flash_tiny with its
ViT on 28x28x1 images (as fashion_mnist.py) and its audio encoder (as spoken_digits.py).

    tools/bazel run //py/gemini/tasks:interleaved -- [--steps=N] [--quick]
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from gemini.eval.tokenizer import WordVocab  # noqa: E402
from gemini.model import multimodal  # noqa: E402
from gemini.tasks import common, fashion_mnist, speech_synth, spoken_digits  # noqa: E402
from gemini.tasks.speech_synth import Voice  # noqa: E402

CLIP_S = 2.0
KINDS = ("what", "yes/no")


def questions():
  """(kind, class asked or -1, spoken text) for every question the task asks."""
  out = [("what", -1, "what is this")]
  for c, name in enumerate(fashion_mnist.NAMES):
    spoken = name.replace("/", " or ").replace("t-shirt", "t shirt")
    out.append(("yes/no", c, f"is this {'an' if spoken[0] in 'aeiou' else 'a'} {spoken}"))
  return out


def vocab() -> WordVocab:
  return WordVocab(["answer", "yes", "no"] + [w for n in fashion_mnist.NAMES for w in n.split()])


def spoken_questions(split: str, per_question: int, seed: int, log=print):
  """{question index: f32 [per_question, CLIP_S*16k]} spoken by `split`'s voices."""
  rng = np.random.default_rng([seed, split == "test", 7])
  names = spoken_digits.speakers(split)["espeak-ng"]
  length = int(CLIP_S * speech_synth.RATE)
  out = {}
  for qi, (_, _, text) in enumerate(questions()):
    clips = []
    for _ in range(per_question):
      voice = Voice("espeak-ng", names[rng.integers(len(names))], int(rng.integers(140, 201)),
                    int(rng.integers(20, 81)))
      x = speech_synth.synthesize(voice, [text])[0][:length]
      clips.append(np.pad(x / max(float(np.abs(x).max()), 1e-6) * 0.9, (0, length - x.size)))
    out[qi] = np.stack(clips)
  log(f"[{split}] {len(out)} questions x {per_question} voices spoken")
  return out


def draw(rng, labels):
  """(image index, question index, answer text) with yes and no equally likely."""
  i = int(rng.integers(len(labels)))
  if rng.random() < 0.3:
    return i, 0, fashion_mnist.NAMES[int(labels[i])]
  yes = rng.random() < 0.5
  c = int(labels[i]) if yes else int((labels[i] + rng.integers(1, 10)) % 10)
  return i, 1 + c, "yes" if yes else "no"


def example(image, audio, answer: str, voc: WordVocab, with_answer: bool):
  tail = voc.encode("answer") + (voc.encode(answer) + [voc.eos_id] if with_answer else [])
  return [("text", [voc.bos_id]), ("image", fashion_mnist.pixels(image)), ("audio", audio),
          ("text", tail)]


def task_config():
  cfg = fashion_mnist.task_config()
  return cfg.replace(name="flash_tiny_interleaved", vocab_size=vocab().vocab_size, max_seq_len=96)


def parse(argv):
  p = common.task_parser(__doc__, "interleaved", steps=3000, batch=32, lr=2e-3,
                         quick=dict(steps=20, voices_per_question=4, test=100))
  p.add_argument("--voices_per_question", type=int, default=40)
  p.add_argument("--test", type=int, default=1000)
  return common.parse_task(p, argv)


def run(argv=None, log=print) -> dict:
  a = parse(argv)
  out = common.task_out(a, "interleaved")
  voc, cfg = vocab(), task_config()
  xtr, ytr = fashion_mnist.load("train", 5000 if a.quick else 0)
  xte, yte = fashion_mnist.load("test")
  qtr = spoken_questions("train", a.voices_per_question, a.seed, log)
  qte = spoken_questions("test", max(a.voices_per_question // 4, 2), a.seed, log)
  rng, trng = np.random.default_rng(a.seed), np.random.default_rng([a.seed, 1])

  def make(r, x, y, qs, with_answer):
    i, q, ans = draw(r, y)
    audio = qs[q][r.integers(len(qs[q]))]
    return example(x[i], audio, ans, voc, with_answer), ans, questions()[q][0]

  test = [make(trng, xte, yte, qte, False) for _ in range(a.test)]
  longest = max(fashion_mnist.NAMES, key=lambda n: len(n.split()))
  seq = multimodal.sequence_length(example(xtr[0], qtr[0][0], longest, voc, True), cfg)
  log(f"interleaved: image + spoken question, sequence {seq}; {cfg.name}; {a.steps} steps x "
      f"{a.batch}; {len(test)} test prompts (held-out images and voices)")

  def next_batch(step):
    return multimodal.build_batch([make(rng, xtr, ytr, qtr, True)[0] for _ in range(a.batch)],
                                  cfg, seq)

  t0 = time.perf_counter()
  params = common.train(cfg, next_batch, a.steps, out, lr=a.lr, seed=a.seed, log=log)
  train_s = time.perf_counter() - t0
  exact, kinds = [], []
  for lo in range(0, len(test), 100):
    chunk = test[lo:lo + 100]
    exs = [e for e, _, _ in chunk]
    b = multimodal.build_batch(exs + [exs[-1]] * (100 - len(exs)), cfg,
                               multimodal.sequence_length(exs[0], cfg))
    for row, (_, ans, kind) in zip(common.greedy_answers(params, cfg, b, max_new=3), chunk):
      row = list(row)
      exact.append(voc.eos_id in row and voc.decode(row[:row.index(voc.eos_id)]) == ans)
      kinds.append(kind)
  exact, kinds = np.asarray(exact), np.asarray(kinds)
  res = {"task": "interleaved", "model": cfg.name, "steps": a.steps, "batch": a.batch,
         "test_prompts": len(test), "train_seconds": round(train_s, 1),
         "exact": float(exact.mean()),
         "by_question": {k: float(exact[kinds == k].mean()) for k in KINDS if np.any(kinds == k)}}
  common.write_json(os.path.join(out, "results.json"), res)
  log(json.dumps(res))
  return res


if __name__ == "__main__":
  run()
