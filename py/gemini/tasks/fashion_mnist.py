"""Fashion-MNIST captioning: image in, "a photo of a sneaker" out, scored by exact class name.

Data: Debian dataset-fashion-mnist (IDX files, 60k train / 10k test, 28x28 grey). Model:
flash_tiny (MoE on layers 1 and 3) with the task's closed word vocabulary and its ViT set to
28x28x1 images in 4x4 patches (49 patches pooled to 16 tokens). Each example is

    <bos> [16 image tokens] a photo of a|an <class words> <eos>

with the loss on the caption words. Evaluation prompts <bos> [image] "a photo of" and decodes
greedily; the answer is exact when the words up to <eos> are the class's "a|an <name>".
Contamination: test images that are byte-identical to a training image are reported and the
accuracy on the rest is given alongside.

    tools/bazel run //py/gemini/tasks:fashion_mnist -- [--steps=N] [--quick]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402

from gemini.config import get_config  # noqa: E402
from gemini.eval import decontam, report  # noqa: E402
from gemini.eval.tokenizer import WordVocab  # noqa: E402
from gemini.model import multimodal  # noqa: E402
from gemini.tasks import common  # noqa: E402

ROOT = "/usr/share/datasets/fashion-mnist"
NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
         "bag", "ankle boot")
MEAN, STD = 0.286, 0.353


def read_idx(path: str) -> np.ndarray:
  """uint8 array of an IDX file (magic 0x0801 labels [N] or 0x0803 images [N,R,C])."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} missing: install Debian package dataset-fashion-mnist")
  with gzip.open(path) as f:
    data = f.read()
  magic = int.from_bytes(data[:4], "big")
  if magic not in (2049, 2051):
    raise ValueError(f"{path}: IDX magic {magic} is neither 2049 (labels) nor 2051 (images)")
  ndim = magic & 0xFF
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if arr.size != int(np.prod(dims)):
    raise ValueError(f"{path}: {arr.size} bytes of data, header says {dims}")
  return arr.reshape(dims)


def load(split: str, limit: int = 0):
  pre = "train" if split == "train" else "t10k"
  x = read_idx(os.path.join(ROOT, f"{pre}-images-idx3-ubyte.gz"))
  y = read_idx(os.path.join(ROOT, f"{pre}-labels-idx1-ubyte.gz"))
  return (x[:limit], y[:limit]) if limit else (x, y)


def caption(label: int) -> str:
  name = NAMES[label]
  return ("an " if name[0] in "aeiou" else "a ") + name


def vocab() -> WordVocab:
  return WordVocab(["a", "an", "photo", "of"] + [w for n in NAMES for w in n.split()])


def task_config(tokens_per_image: int = 16, size: str = "small", vit_width: int = 64,
                vit_layers: int = 2):
  """flash_tiny with the task's vocabulary and a 28x28x1 ViT in 4x4 patches. size="small"
  (the default, ~4x cheaper per image) narrows it to what one grey 28x28 image needs: ViT
  width `vit_width` (64) in `vit_layers` (2), decoder width 128 in 2 layers with MoE (4
  experts top-1) on layer 1."""
  base = get_config("flash_tiny")
  v = dataclasses.replace(base.vision, image_size=28, patch_size=4, channels=1,
                          tokens_per_image=tokens_per_image)
  cfg = base.replace(name="flash_tiny_fmnist", vocab_size=vocab().vocab_size, max_seq_len=64,
                     dtype="float32", vision=v)
  if size == "flash_tiny":
    return cfg
  if size != "small":
    raise ValueError(f"size={size!r}: expected 'small' or 'flash_tiny'")
  v = dataclasses.replace(v, d_model=vit_width, d_ff=4 * vit_width, n_layers=vit_layers)
  return common.small_decoder(cfg.replace(vision=v), "flash_tiny_fmnist_small")


def augment(images: np.ndarray, rng: np.random.Generator, shift: int = 2,
            erase: bool = False) -> np.ndarray:
  """uint8 [N,28,28] -> each image moved by up to `shift` pixels each way (the uncovered edge
  is the background, 0) and mirrored left-right half the time: a garment's class survives
  both, and several epochs over the 60k images otherwise memorise them. erase: then, half the
  time, a random rectangle (2-40 % of the area, aspect 0.3-3.3) filled with uniform noise
  (random erasing, arXiv 1708.04896): the model cannot lean on any one region."""
  n, h, w = images.shape
  padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)))
  dy, dx = rng.integers(0, 2 * shift + 1, size=(2, n))
  rows = dy[:, None] + np.arange(h)[None]                          # [N,H]
  cols = dx[:, None] + np.arange(w)[None]                          # [N,W]
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  flip = rng.random(n) < 0.5
  out[flip] = out[flip, :, ::-1]
  if erase:
    erase_rectangles(out, rng)
  return out


def erase_rectangles(images: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> None:
  """In place: each image with probability p gets one rectangle of uniform uint8 noise."""
  n, h, w = images.shape
  for i in np.flatnonzero(rng.random(n) < p):
    area = rng.uniform(0.02, 0.4) * h * w
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3)))
    eh = int(min(h, max(1, round(np.sqrt(area * aspect)))))
    ew = int(min(w, max(1, round(np.sqrt(area / aspect)))))
    y, x = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
    images[i, y:y + eh, x:x + ew] = rng.integers(0, 256, (eh, ew), dtype=np.uint8)


def pixels(x: np.ndarray) -> np.ndarray:
  return ((x.astype(np.float32) / 255.0 - MEAN) / STD)[..., None]


def examples(images, labels, voc: WordVocab, with_answer: bool):
  prompt = voc.encode("a photo of")
  out = []
  for img, lab in zip(images, labels):
    tail = prompt + (voc.encode(caption(int(lab)).split(" ", 1)[0] + " " +
                                NAMES[int(lab)]) + [voc.eos_id] if with_answer else [])
    out.append([("text", [voc.bos_id]), ("image", pixels(img)), ("text", tail)])
  return out


def evaluate(params, cfg, images, labels, voc: WordVocab, batch: int = 250, log=print):
  """-> (exact [N] bool, predicted strings)."""
  exs = examples(images, labels, voc, with_answer=False)
  seq = multimodal.sequence_length(exs[0], cfg)
  exact, preds = [], []
  t0 = time.perf_counter()
  for lo in range(0, len(exs), batch):
    chunk = exs[lo:lo + batch]
    pad = batch - len(chunk)
    b = multimodal.build_batch(chunk + [chunk[-1]] * pad, cfg, seq)
    ids = common.greedy_answers(params, cfg, b, max_new=4)[:len(chunk)]
    for row, lab in zip(ids, labels[lo:lo + batch]):
      row = list(row)
      words = voc.decode(row[:row.index(voc.eos_id)] if voc.eos_id in row else row)
      preds.append(words)
      exact.append(words == caption(int(lab)) and voc.eos_id in row)
    log(f"eval {min(lo + batch, len(exs))}/{len(exs)} exact {np.mean(exact):.4f} "
        f"({(lo + batch) / (time.perf_counter() - t0):.0f} img/s)")
  return np.asarray(exact), preds


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--steps", type=int, default=2400)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--lr", type=float, default=3e-3, help="peak lr (linear warmup, cosine "
                 "to lr/10)")
  p.add_argument("--warmup", type=int, default=100)
  p.add_argument("--size", default="small", choices=("small", "flash_tiny"))
  p.add_argument("--tokens_per_image", type=int, default=16)
  p.add_argument("--train_limit", type=int, default=0)
  p.add_argument("--test_limit", type=int, default=0)
  p.add_argument("--quick", action="store_true", help="CI short form: 60 steps, 1k train, "
                 "500 test images")
  p.add_argument("--out", default="", help="results folder (default $GEMINI_RESULTS or "
                 "/tmp/gemini-results)/fashion_mnist")
  p.add_argument("--augment", default="shift_flip", choices=("shift_flip", "shift_flip_erase",
                                                             "none"),
                 help="training images moved by up to 2 pixels and mirrored half the time "
                 "(+ a random noise rectangle half the time)")
  p.add_argument("--vit_width", type=int, default=64, help="ViT width of --size=small")
  p.add_argument("--vit_layers", type=int, default=2, help="ViT layers of --size=small")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  if a.quick:
    a.steps, a.batch, a.train_limit, a.test_limit = 60, 64, 1024, 500
  return a


def run(argv=None, log=print) -> dict:
  a = parse(sys.argv[1:] if argv is None else argv)
  out = a.out or common.results_dir("fashion_mnist" + ("_quick" if a.quick else ""))
  os.makedirs(out, exist_ok=True)
  voc, cfg = vocab(), task_config(a.tokens_per_image, a.size, a.vit_width, a.vit_layers)
  xtr, ytr = load("train", a.train_limit)
  xte, yte = load("test", a.test_limit)
  log(f"fashion_mnist: {len(xtr)} train / {len(xte)} test images; {cfg.name}: d_model "
      f"{cfg.d_model}, {cfg.n_layers} layers, MoE {cfg.moe.num_experts} experts top-{cfg.moe.top_k} "
      f"on layers {cfg.moe.layers}, vocab {cfg.vocab_size}; {a.steps} steps x {a.batch}")
  one_per_class = examples(xtr[:10], np.arange(10), voc, with_answer=True)
  seq = max(multimodal.sequence_length(e, cfg) for e in one_per_class)
  rng = np.random.default_rng(a.seed)
  order = np.zeros(0, np.int64)

  def next_batch(step):
    nonlocal order
    if len(order) < a.batch:
      order = np.concatenate([order, rng.permutation(len(xtr))])
    idx, order = order[:a.batch], order[a.batch:]
    imgs = (augment(xtr[idx], rng, erase=a.augment == "shift_flip_erase")
            if a.augment != "none" else xtr[idx])
    return multimodal.build_batch(examples(imgs, ytr[idx], voc, with_answer=True), cfg, seq)

  t0 = time.perf_counter()
  params = common.train(cfg, next_batch, a.steps, out, lr=a.lr, warmup=a.warmup, seed=a.seed,
                        log=log)
  train_s = time.perf_counter() - t0
  exact, preds = evaluate(params, cfg, xte, yte, voc, log=log)
  dup = decontam.duplicate_arrays(xte, xtr)
  clean = np.ones(len(xte), bool)
  clean[dup] = False
  per_class = [float(exact[yte == c].mean()) if np.any(yte == c) else 0.0 for c in range(10)]
  res = {"task": "fashion_mnist", "model": cfg.name, "steps": a.steps, "batch": a.batch,
         "lr": a.lr, "augment": a.augment, "epochs": round(a.steps * a.batch / len(xtr), 2),
         "load_average_at_end": os.getloadavg(),
         "train_images": int(len(xtr)), "test_images": int(len(xte)),
         "exact": float(exact.mean()), "target": 0.90, "duplicates_of_train": len(dup),
         "clean_exact": float(exact[clean].mean()), "train_seconds": round(train_s, 1),
         "per_class": dict(zip(NAMES, per_class)), "tokens_per_image": cfg.vision.tokens_per_image,
         "vit_width": cfg.vision.d_model, "vit_layers": cfg.vision.n_layers}
  common.write_json(os.path.join(out, "results.json"), res)
  with open(os.path.join(out, "predictions.jsonl"), "w") as f:
    for i, (p, ok) in enumerate(zip(preds, exact)):
      f.write(json.dumps({"i": i, "label": NAMES[int(yte[i])], "pred": p, "exact": bool(ok)}) + "\n")
  report.bar_plot(list(NAMES), per_class, [0.9] * 10, os.path.join(out, "per_class.png"),
                  f"Fashion-MNIST caption exact match ({exact.mean():.3f} overall)")
  log(json.dumps({k: v for k, v in res.items() if k != "per_class"}))
  return res


if __name__ == "__main__":
  run()
