"""The repo's import layering, read from the source with `ast`: no upward edge, no cycle.

Every .py file under py/gemini, pallas, csrc, tests and tools is parsed; every `import` and
`from ... import` anywhere in it (module top and function bodies alike) that names one of our
modules is an edge file -> file. The layers, lowest first:

  pallas      kernels: import only pallas (tests and benches included).
  csrc        native modules' Python: import no gemini (their tests and benches may: they
              compare against the Python reference implementations).
  gemini      inside the package, by rank; a library file may import its own package and
              packages of the same or a lower rank (same-rank packages may use each other;
              cycles are caught separately). `*_test.py` files are consumers, not layers: they
              may import any gemini module (and pallas); only tests and benches import them.
                0 gemini, config, config_flags, crc32c, testing  (leaf helpers)
                1 sharding, data
                2 model
                3 quant, checkpoints, family (counts derived from the model spec)
                4 train, export, serve, eval, tasks, distill, posttrain, family_main (apps)
  tests       end-to-end tests: may import anything.
  tools       build helpers: import nothing of ours.
A gemini package missing from the table fails the test: give it a rank here.

Cycles: any strongly connected component of the file graph with more than one file.
"""

from __future__ import annotations

import ast
import collections
import os
from typing import Dict, List, Optional, Set, Tuple

# (file, imported module) edges known to be wrong and being removed elsewhere; each entry
# says why. Entries that no longer occur are reported (delete them) but do not fail.
KNOWN_EDGES = set()

GEMINI_RANK = {
    "gemini": 0, "gemini.config": 0, "gemini.config_flags": 0, "gemini.crc32c": 0,
    "gemini.testing": 0,
    "gemini.sharding": 1, "gemini.data": 1,
    "gemini.model": 2,
    "gemini.quant": 3, "gemini.checkpoints": 3, "gemini.family": 3,
    "gemini.train": 4, "gemini.export": 4, "gemini.serve": 4, "gemini.eval": 4,
    "gemini.tasks": 4, "gemini.distill": 4, "gemini.posttrain": 4, "gemini.family_main": 4,
}

# Source folder -> module prefix (py/ is an import root, the repo root is the other).
ROOTS = {"py/gemini": "gemini", "pallas": "pallas", "csrc": "csrc", "tests": "tests",
         "tools": "tools"}
SKIP_DIRS = {"third_party", "__pycache__"}


def repo_root() -> str:
  """The source tree: this file's real location (Bazel runs tests from symlinked runfiles)."""
  root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
  if not os.path.isdir(os.path.join(root, "py", "gemini")):
    raise RuntimeError(f"import_layering_test: {root} is not the repo root (no py/gemini)")
  return root


def module_files(root: str) -> Dict[str, str]:
  """Module name -> path relative to root, for every .py file of ours."""
  mods = {}
  for folder, prefix in ROOTS.items():
    for d, dirs, files in os.walk(os.path.join(root, folder)):
      dirs[:] = sorted(x for x in dirs if not x.startswith((".", "bazel-")) and x not in SKIP_DIRS)
      for f in files:
        if not f.endswith(".py"):
          continue
        rel = os.path.relpath(os.path.join(d, f), root)
        parts = os.path.relpath(os.path.join(d, f), os.path.join(root, folder))[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        mods[".".join([prefix, *parts])] = rel
  return mods


def _resolve(name: str, mods: Dict[str, str]) -> Optional[str]:
  """The longest prefix of dotted `name` that is one of our modules (None: not ours)."""
  while name and name not in mods:
    name = name.rpartition(".")[0]
  return name or None


def import_edges(root: str, mods: Dict[str, str]) -> List[Tuple[str, str, int]]:
  """(importer, imported, line) for every import of one of our modules, anywhere in a file."""
  edges = []
  for mod, rel in mods.items():
    is_pkg = rel.endswith("__init__.py")
    with open(os.path.join(root, rel), encoding="utf-8") as f:
      tree = ast.parse(f.read(), filename=rel)
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          pkg = mod if is_pkg else mod.rpartition(".")[0]
          for _ in range(node.level - 1):
            pkg = pkg.rpartition(".")[0]
          base = f"{pkg}.{base}" if base else pkg
        names = [f"{base}.{a.name}" for a in node.names]
      for name in names:
        target = _resolve(name, mods)
        if target and target != mod:
          edges.append((mod, target, node.lineno))
  return edges


def gemini_unit(module: str) -> str:
  """The ranked unit of a gemini module: gemini.<pkg> for subpackages, else the module."""
  parts = module.split(".")
  return ".".join(parts[:2])


def _is_test_or_bench(module: str) -> bool:
  leaf = module.rpartition(".")[2]
  return leaf.endswith("_test") or leaf == "bench" or leaf.endswith("_bench")


def upward(src: str, dst: str) -> Optional[str]:
  """Why the edge src -> dst breaks the layering (None if it does not)."""
  top_src, top_dst = src.split(".")[0], dst.split(".")[0]
  if top_src == "pallas" and top_dst != "pallas":
    return "pallas imports only pallas"
  if top_src == "csrc" and top_dst == "gemini" and not _is_test_or_bench(src):
    return "csrc modules import no gemini (only their tests and benches may)"
  if top_src == "tools" and top_dst != "tools":
    return "tools import nothing of ours"
  if _is_test_or_bench(dst) and top_src != "tests" and not _is_test_or_bench(src):
    return "only tests and benches import a test or bench"
  if top_src == "gemini" and top_dst == "gemini" and not src.endswith("_test"):
    a, b = gemini_unit(src), gemini_unit(dst)
    if a == b:
      return None
    for unit in (a, b):
      if unit not in GEMINI_RANK:
        return f"{unit} has no rank in GEMINI_RANK (tests/import_layering_test.py)"
    if GEMINI_RANK[b] > GEMINI_RANK[a]:
      return f"{a} (rank {GEMINI_RANK[a]}) imports the higher {b} (rank {GEMINI_RANK[b]})"
  if top_src in ("pallas", "csrc", "gemini") and top_dst == "tests":
    return "only tests import tests"
  return None


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
  """Strongly connected components with more than one node (Tarjan, iterative)."""
  index: Dict[str, int] = {}
  low: Dict[str, int] = {}
  stack: List[str] = []
  on_stack: Set[str] = set()
  found = []
  counter = 0
  for start in sorted(graph):
    if start in index:
      continue
    work = [(start, iter(sorted(graph.get(start, ()))))]
    index[start] = low[start] = counter
    counter += 1
    stack.append(start)
    on_stack.add(start)
    while work:
      node, it = work[-1]
      child = next(it, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = counter
          counter += 1
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph.get(child, ())))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        comp = []
        while True:
          w = stack.pop()
          on_stack.discard(w)
          comp.append(w)
          if w == node:
            break
        if len(comp) > 1:
          found.append(sorted(comp))
  return found


def _cycle_path(comp: List[str], graph: Dict[str, Set[str]]) -> List[str]:
  """One concrete cycle inside a strongly connected component, for the error message."""
  members = set(comp)
  start = comp[0]
  prev = {start: None}
  queue = collections.deque([start])
  while queue:
    node = queue.popleft()
    for nxt in sorted(graph[node] & members):
      if nxt == start:
        path = [node]
        while prev[path[-1]] is not None:
          path.append(prev[path[-1]])
        return [start, *reversed(path[:-1]), start]
      if nxt not in prev:
        prev[nxt] = node
        queue.append(nxt)
  return comp


def _graph():
  root = repo_root()
  mods = module_files(root)
  edges = import_edges(root, mods)
  return root, mods, edges


def test_sees_the_whole_repo():
  _, mods, edges = _graph()
  # A walk that found nothing would pass every check below.
  assert {"gemini.model.attention", "pallas.ring_attention.ops", "tests.import_layering_test"} <= set(mods)
  assert ("gemini.model.attention", "pallas.ring_attention.ops") in {(a, b) for a, b, _ in edges}


def test_no_upward_import():
  _, mods, edges = _graph()
  bad = []
  for src, dst, line in edges:
    reason = upward(src, dst)
    if reason and (src, dst) not in KNOWN_EDGES:
      bad.append(f"{mods[src]}:{line}: {src} -> {dst}: {reason}")
  assert not bad, "upward imports:\n  " + "\n  ".join(sorted(set(bad)))


def test_no_import_cycle():
  _, mods, edges = _graph()
  present = {(a, b) for a, b, _ in edges}
  stale = KNOWN_EDGES - present
  if stale:
    print(f"KNOWN_EDGES entries that no longer occur (delete them): {sorted(stale)}")
  graph: Dict[str, Set[str]] = collections.defaultdict(set)
  for a, b in present - KNOWN_EDGES:
    graph[a].add(b)
  for m in mods:
    graph.setdefault(m, set())
  found = [" -> ".join(_cycle_path(c, graph)) for c in cycles(graph)]
  assert not found, "import cycles:\n  " + "\n  ".join(found)


def test_checker_flags_what_it_should():
  # The rules themselves, on synthetic edges (a checker that accepts everything fails here).
  assert upward("pallas.moe.ops", "gemini.config")
  assert upward("pallas.ring_attention.bench", "gemini.model.transformer")
  assert upward("csrc.loader.reader", "gemini.data.loader")
  assert not upward("csrc.runtime.runtime_test", "gemini.export.gnb")
  assert upward("gemini.model.attention", "gemini.quant.int4")
  assert upward("gemini.config", "gemini.model.transformer")
  assert upward("gemini.newpkg.x", "gemini.config")          # unranked package
  assert not upward("gemini.train.trainer", "gemini.model.transformer")
  assert not upward("gemini.model.attention", "pallas.ring_attention.ops")
  assert not upward("gemini.sharding_test", "gemini.model.transformer")  # tests are consumers
  assert upward("gemini.train.trainer", "gemini.model.moe_test")
  g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert cycles(g) == [["a", "b", "c"]]
  assert _cycle_path(["a", "b", "c"], g) == ["a", "b", "c", "a"]
