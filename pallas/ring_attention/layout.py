"""Sequence placement for the causal ring: which global tokens each device of the ring holds.

With a causal mask, a device holding the *end* of the sequence attends to every earlier key,
while the device holding the start attends to almost nothing: the naive contiguous split
gives device i about (2i+1)/n^2 of the work and the ring runs at the speed of the last device.

  contiguous: device i holds tokens [i*S/n, (i+1)*S/n)                       (naive)
  zigzag:     cut S into 2n chunks of S/(2n); device i holds chunks i and 2n-1-i, so each
              device owns one early and one late chunk and the causal work pairs up evenly
  striped:    device i holds tokens i, i+n, i+2n, ... (token-level round robin)

All functions are pure NumPy on static shapes: the permutation is a compile-time constant.
"""

from __future__ import annotations

import numpy as np

LAYOUTS = ("zigzag", "striped", "contiguous")


def chunk_multiple(n_devices: int, layout: str) -> int:
  """The global sequence length must be a multiple of this for `layout` on n devices."""
  _check_layout(layout)
  return 2 * n_devices if layout == "zigzag" else n_devices


def permutation(seq_len: int, n_devices: int, layout: str = "zigzag") -> np.ndarray:
  """int32 [seq_len] `perm` with x_layout = x[:, perm]: the layout order of the global tokens.

  After the permutation, device d's shard along the sequence dim (seq_len/n contiguous
  entries) holds the tokens its layout assigns it; perm itself is their global positions.
  """
  _check_layout(layout)
  mult = chunk_multiple(n_devices, layout)
  if seq_len % mult:
    raise ValueError(f"layout.permutation: seq_len={seq_len} is not a multiple of {mult} "
                     f"(layout={layout!r}, n_devices={n_devices})")
  idx = np.arange(seq_len, dtype=np.int32)
  if layout == "contiguous":
    return idx
  if layout == "striped":
    return idx.reshape(seq_len // n_devices, n_devices).T.reshape(-1)
  chunks = idx.reshape(2 * n_devices, seq_len // (2 * n_devices))
  order = [c for d in range(n_devices) for c in (d, 2 * n_devices - 1 - d)]
  return chunks[order].reshape(-1)


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
  """int32 `inv` with x == x_layout[:, inv]."""
  inv = np.empty_like(perm)
  inv[perm] = np.arange(perm.size, dtype=perm.dtype)
  return inv


def causal_block_work(seq_len: int, n_devices: int, block: int, layout: str) -> np.ndarray:
  """int64 [n_devices]: (q block, k block) pairs with at least one causally allowed entry.

  Counts, for each device, the blocks the flash kernel computes (the rest are skipped) over
  the whole ring: its local queries cut into `block`-row blocks against every device's keys
  cut the same way. Used to compare load balance between layouts.
  """
  perm = permutation(seq_len, n_devices, layout)
  local = seq_len // n_devices
  if local % block:
    raise ValueError(f"layout.causal_block_work: local length {local} not a multiple of block={block}")
  blocks = perm.reshape(seq_len // block, block)
  lo, hi = blocks.min(axis=1), blocks.max(axis=1)
  needed = hi[:, None] >= lo[None, :]              # some k_pos <= some q_pos in the pair
  per_dev = local // block
  return needed.reshape(n_devices, per_dev, -1).sum(axis=(1, 2))


def _check_layout(layout: str):
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
