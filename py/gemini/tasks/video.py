"""Video questions: Fashion-MNIST sprites moving over real photographs; count them, say which
appeared first, say which way the first one moves.

A clip is T=6 grey frames of 64x64: a crop of one of scikit-image's bundled photographs
(dimmed to half brightness) with 1-4 Fashion-MNIST sprites (28x28 resized to 20x20, pasted by
maximum) each moving left, right, up or down at 2-4 pixels a frame. The first sprite is there
from frame 0; the others appear at frames 1..3, so "first" is always unambiguous. Training
clips use training sprites over TRAIN_PHOTOS, test clips test sprites over TEST_PHOTOS.

    <bos> [T x tokens_per_frame video tokens] <question> <answer> <eos> [<question> ...]
      how many     -> one | two | three | four
      which first  -> the class name of the first sprite
      which way    -> left | right | up | down          (of the first sprite)

Model (--size=small, the default): a ViT of width 64 in 2 layers on 64x64x1 frames in 4x4
patches (a 16x16 grid) and the tasks' small decoder (MoE on layer 1); --size=flash_tiny keeps
flash_tiny's (MoE on layers 1 and 3). The ViT output is pooled to tokens_per_frame: 66 (8x8
+ 2 bands) or 258 (16x16 + 2 bands), the 2.5 report's trade. Training asks each clip
--questions of the three in random order; evaluation asks one right after the clip and
decodes greedily to <eos>; exact match per question.

    tools/bazel run //py/gemini/tasks:video -- [--tokens_per_frame=66|258] [--steps=N] [--quick]
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import skimage.data  # noqa: E402

from gemini.config import get_config  # noqa: E402
from gemini.eval import report  # noqa: E402
from gemini.eval.tokenizer import WordVocab  # noqa: E402
from gemini.model import multimodal  # noqa: E402
from gemini.tasks import common, fashion_mnist  # noqa: E402

FRAMES, SIZE, SPRITE = 6, 64, 20
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field",
                "immunohistochemistry", "retina", "brick")
TEST_PHOTOS = ("moon", "grass", "gravel", "colorwheel")
COUNTS = ("one", "two", "three", "four")
MOVES = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
QUESTIONS = ("how many", "which first", "which way")


def photos(names) -> list:
  """Grey f32 [H,W] in [0,1] of scikit-image's bundled photographs."""
  out = []
  for n in names:
    x = np.asarray(getattr(skimage.data, n)(), np.float32)
    x = x[..., :3].mean(axis=-1) if x.ndim == 3 else x
    out.append(x / max(float(x.max()), 1.0))
  return out


def sprites(split: str, limit: int = 0):
  """(f32 [N,SPRITE,SPRITE] in [0,1], labels) from the Fashion-MNIST split."""
  x, y = fashion_mnist.load(split, limit)
  small = [np.asarray(PIL.Image.fromarray(im).resize((SPRITE, SPRITE), PIL.Image.BILINEAR),
                      np.float32) / 255.0 for im in x]
  return np.stack(small), y


@dataclasses.dataclass(frozen=True)
class Clip:
  frames: np.ndarray    # f32 [FRAMES, SIZE, SIZE, 1]
  count: int
  first: int            # class of the first sprite
  move: str             # direction of the first sprite


def _start(rng, move: str, travel: int):
  """Top-left (row, col) from which a sprite moving `travel` pixels stays in the frame."""
  span = SIZE - SPRITE
  dr, dc = MOVES[move]
  pick = lambda d: int(rng.integers(travel, span + 1) if d < 0 else
                       rng.integers(0, span - travel + 1) if d > 0 else rng.integers(0, span + 1))
  return pick(dr), pick(dc)


def make_clip(rng: np.random.Generator, bgs, sprite_x, sprite_y) -> Clip:
  bg = bgs[rng.integers(len(bgs))]
  r0, c0 = rng.integers(0, bg.shape[0] - SIZE + 1), rng.integers(0, bg.shape[1] - SIZE + 1)
  frames = np.repeat(0.5 * bg[None, r0:r0 + SIZE, c0:c0 + SIZE], FRAMES, axis=0)
  n = int(rng.integers(1, 5))
  starts = [0] + sorted(int(s) for s in rng.integers(1, 4, size=n - 1))
  picks = []
  for start in starts:
    i, move = int(rng.integers(len(sprite_x))), list(MOVES)[rng.integers(4)]
    speed = int(rng.integers(2, 5))
    (dr, dc), (r, c) = MOVES[move], _start(rng, move, speed * (FRAMES - 1 - start))
    for t in range(start, FRAMES):
      rr, cc = r + dr * speed * (t - start), c + dc * speed * (t - start)
      win = frames[t, rr:rr + SPRITE, cc:cc + SPRITE]
      np.maximum(win, sprite_x[i], out=win)
    picks.append((int(sprite_y[i]), move))
  return Clip(frames[..., None], n, picks[0][0], picks[0][1])


def answer(clip: Clip, question: str) -> str:
  if question == "how many":
    return COUNTS[clip.count - 1]
  if question == "which first":
    return fashion_mnist.NAMES[clip.first]
  return clip.move


def vocab() -> WordVocab:
  words = [w for q in QUESTIONS for w in q.split()] + list(COUNTS) + list(MOVES)
  return WordVocab(words + [w for n in fashion_mnist.NAMES for w in n.split()])


def task_config(tokens_per_frame: int, size: str = "small"):
  """flash_tiny with a 64x64x1 ViT in 4x4 patches pooled to tokens_per_frame; size="small"
  (the default) narrows the ViT to width 64 in 2 layers and the decoder to
  `common.small_decoder`, flash_tiny keeps both."""
  base = get_config("flash_tiny")
  v = dataclasses.replace(base.vision, image_size=SIZE, patch_size=4, channels=1,
                          tokens_per_frame=tokens_per_frame)
  cfg = base.replace(name=f"flash_tiny_video{tokens_per_frame}", vocab_size=vocab().vocab_size,
                     max_seq_len=FRAMES * tokens_per_frame + 16, dtype="float32", vision=v)
  if size == "flash_tiny":
    return cfg
  if size != "small":
    raise ValueError(f"size={size!r}: expected 'small' or 'flash_tiny'")
  v = dataclasses.replace(v, d_model=64, d_ff=256, n_layers=2)
  return common.small_decoder(cfg.replace(vision=v), f"flash_tiny_video{tokens_per_frame}_small")


def example(clip: Clip, questions, voc: WordVocab, with_answer: bool):
  """<bos> clip, then each question (with its answer and <eos> when with_answer). Training
  asks several questions of one clip: the clip's ~400 tokens are most of a step's cost, and
  each answer is supervised, so the encoder gets one gradient per question for one pass."""
  tail = []
  for q in questions:
    tail += voc.encode(q) + (voc.encode(answer(clip, q)) + [voc.eos_id] if with_answer else [])
  return [("text", [voc.bos_id]), ("video", (clip.frames - 0.5) / 0.5), ("text", tail)]


def evaluate(params, cfg, clips, voc: WordVocab, batch: int = 50) -> dict:
  """-> {question: exact [N] bool} (each clip asked every question)."""
  out = {}
  for q in QUESTIONS:
    exs = [example(c, [q], voc, False) for c in clips]
    seq = multimodal.sequence_length(exs[0], cfg)
    exact = []
    for lo in range(0, len(exs), batch):
      chunk = exs[lo:lo + batch]
      b = multimodal.build_batch(chunk + [chunk[-1]] * (batch - len(chunk)), cfg, seq)
      for row, clip in zip(common.greedy_answers(params, cfg, b, max_new=3)[:len(chunk)],
                           clips[lo:lo + batch]):
        row = list(row)
        words = voc.decode(row[:row.index(voc.eos_id)]) if voc.eos_id in row else None
        exact.append(words == answer(clip, q))
    out[q] = np.asarray(exact)
  return out


def parse(argv):
  p = common.task_parser(__doc__, "video<tokens_per_frame>", steps=1500, batch=16, lr=2e-3,
                         quick=dict(steps=10, batch=4, test_clips=20))
  p.add_argument("--tokens_per_frame", type=int, default=66)
  p.add_argument("--test_clips", type=int, default=500)
  p.add_argument("--questions", type=int, default=3, choices=(1, 2, 3),
                 help="questions asked of each training clip, in random order (evaluation "
                 "asks one, right after the clip, as the first of these)")
  p.add_argument("--size", default="small", choices=("small", "flash_tiny"),
                 help="the model (task_config)")
  return common.parse_task(p, argv)


def run(argv=None, log=print) -> dict:
  a = parse(argv)
  out = common.task_out(a, f"video{a.tokens_per_frame}")
  voc, cfg = vocab(), task_config(a.tokens_per_frame, a.size)
  train_bg, test_bg = photos(TRAIN_PHOTOS), photos(TEST_PHOTOS)
  sx, sy = sprites("train", 10000 if a.quick else 0)
  tx, ty = sprites("test", 2000)
  rng = np.random.default_rng(a.seed)
  test = [make_clip(np.random.default_rng([a.seed, 1, i]), test_bg, tx, ty)
          for i in range(a.test_clips)]
  # <bos>, the clip, per question: two words, an answer of at most two words, <eos>.
  seq = 1 + FRAMES * a.tokens_per_frame + (2 + 2 + 1) * a.questions
  log(f"video: {FRAMES} frames of {SIZE}x{SIZE}, {a.tokens_per_frame} tokens/frame "
      f"({FRAMES * a.tokens_per_frame} per clip, sequence {seq}); {cfg.name}; "
      f"{a.steps} steps x {a.batch}; {len(test)} test clips x {len(QUESTIONS)} questions")

  def next_batch(step):
    exs = [example(make_clip(rng, train_bg, sx, sy),
                   [QUESTIONS[i] for i in rng.permutation(3)[:a.questions]], voc, True)
           for _ in range(a.batch)]
    return multimodal.build_batch(exs, cfg, seq)

  t0 = time.perf_counter()
  params = common.train(cfg, next_batch, a.steps, out, lr=a.lr, seed=a.seed, log=log)
  log(f"video: parameters in {common.save_params(params, out)}")
  train_s = time.perf_counter() - t0
  exact = evaluate(params, cfg, test, voc)
  counts = np.asarray([c.count for c in test])
  res = {"task": "video", "model": cfg.name, "size": a.size, "tokens_per_frame": a.tokens_per_frame,
         "tokens_per_clip": FRAMES * a.tokens_per_frame, "steps": a.steps, "batch": a.batch,
         "questions_per_training_clip": a.questions,
         "test_clips": len(test), "train_seconds": round(train_s, 1), "target_count": 0.90,
         "exact": {q: float(v.mean()) for q, v in exact.items()},
         "count_by_truth": {COUNTS[k - 1]: float(exact["how many"][counts == k].mean())
                            for k in range(1, 5) if np.any(counts == k)}}
  common.write_json(os.path.join(out, "results.json"), res)
  report.bar_plot(list(QUESTIONS), [res["exact"][q] for q in QUESTIONS], [0.9, 0.0, 0.0],
                  os.path.join(out, "per_question.png"),
                  f"Video questions at {a.tokens_per_frame} tokens/frame")
  log(json.dumps(res))
  return res


if __name__ == "__main__":
  run()
