"""Pytree paths as names: `(DictKey('layers'), SequenceKey(0), DictKey('w'))` -> "layers/0/w".

One naming for every place that keys arrays by where they sit in a tree (checkpoint
checksums, optimizer-moment shardings), so a dict keyed '0' and a list at index 0 name the
same leaf.
"""

from __future__ import annotations

from typing import Tuple


def path_names(path) -> Tuple[str, ...]:
  """The key of every step of a jax.tree_util key path, as strings."""
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
  return tuple(out)


def path_name(path) -> str:
  """"a/b/c" for a jax.tree_util key path."""
  return "/".join(path_names(path))
