"""One interleaved sequence of text, images, audio and video: layout, batch building, embedding.

Batch keys read by `embed_sequence` (all NumPy or jax arrays; media keys only if used):
    tokens       int32 [B,S]          text token ids; at media positions any id (ignored)
    images       f32   [Ni,H,W,C]     H = W = cfg.vision.image_size, C = channels
    audio        f32   [Na,L]         16 kHz waveforms, one common length L per batch
    video        f32   [Nv,T,H,W,C]   T frames per clip, one common T per batch
  layout (M = max media items per row; unused slots have kind 0):
    media_kind   int32 [B,M]   0 = empty slot, 1 = image, 2 = audio, 3 = video
    media_index  int32 [B,M]   which row of images / audio / video the item is
    media_start  int32 [B,M]   sequence offset of the item's first token
    media_len    int32 [B,M]   tokens of the item (image: tokens_per_image; audio:
                               audio.audio_num_tokens(L); video: T * tokens_per_frame)
`build_batch` also returns targets, segment_ids, positions and loss_mask (see there).

    each media array ─its encoder, once per item─▶ [N, n, D] ─flatten, concat─▶ table [R, D]
    layout ─▶ src [B,S] (row of table or -1 = text), bidir_ids [B,S] (slot m+1 or 0 = text)
    x = where(src >= 0, table[src], embed['tokens'][tokens])          ─▶ x [B,S,D], bidir_ids

bidir_ids gives each media item a unique nonzero id within its row, so attention lets the
item's tokens see each other in both directions while everything stays causal across items.
Media tokens take consecutive positions like text (1-D RoPE over the whole sequence).
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig
from gemini.model import audio as audio_lib
from gemini.model import video as video_lib
from gemini.model import vision as vision_lib

KIND_IDS = {"image": 1, "audio": 2, "video": 3}
ARRAY_KEYS = {"image": "images", "audio": "audio", "video": "video"}
LAYOUT_KEYS = ("media_kind", "media_index", "media_start", "media_len")
MEDIA_KEYS = tuple(ARRAY_KEYS.values()) + LAYOUT_KEYS


class MediaItem(NamedTuple):
  kind: str        # "image" | "audio" | "video"
  start: int       # sequence offset of the first token
  num_tokens: int
  index: int       # row in the batch's array for this kind


def num_tokens(kind: str, payload_shape: Sequence[int], cfg: ModelConfig) -> int:
  """Tokens one item becomes. payload_shape: image [H,W,C], audio [L], video [T,H,W,C]."""
  if kind == "image":
    return cfg.vision.tokens_per_image
  if kind == "audio":
    return audio_lib.audio_num_tokens(int(payload_shape[0]), cfg.audio)
  if kind == "video":
    return video_lib.video_num_tokens(int(payload_shape[0]), cfg)
  raise ValueError(f"multimodal: unknown item kind {kind!r}; expected text/image/audio/video")


def _check_enabled(kind: str, cfg: ModelConfig):
  enabled = cfg.audio.enabled if kind == "audio" else cfg.vision.enabled
  if not enabled:
    sub = "audio" if kind == "audio" else "vision"
    raise ValueError(f"multimodal: batch has {kind} items but cfg {cfg.name!r} has "
                     f"{sub}.enabled=False")


def sequence_length(example: Sequence[Tuple[str, object]], cfg: ModelConfig) -> int:
  """Length of one example (list of (kind, payload)) once media are expanded to tokens."""
  return sum(len(p) if k == "text" else num_tokens(k, np.shape(p), cfg) for k, p in example)


def build_batch(examples: Sequence[Sequence[Tuple[str, object]]], cfg: ModelConfig,
                seq_len: int) -> Dict[str, np.ndarray]:
  """Host-side: lays out examples (one per row) into a batch for embed_sequence / loss_fn.

  examples[b] = [(kind, payload), ...] in sequence order: ("text", ids), ("image", [H,W,C]),
  ("audio", [L]), ("video", [T,H,W,C]). Rows are right-padded to seq_len (segment_ids 0).
  targets[s] = tokens[s+1]; loss_mask[s] = 1 only where position s+1 is text of the same row
  (the model never learns to predict media placeholders). positions = arange per row.
  """
  b = len(examples)
  tokens = np.zeros((b, seq_len), np.int32)
  is_text = np.zeros((b, seq_len), bool)
  segment_ids = np.zeros((b, seq_len), np.int32)
  arrays: Dict[str, List[np.ndarray]] = {k: [] for k in ARRAY_KEYS}
  items: List[List[MediaItem]] = []
  for r, example in enumerate(examples):
    pos, row = 0, []
    for j, (kind, payload) in enumerate(example):
      if kind == "text":
        ids = np.asarray(payload, np.int32).reshape(-1)
        n = len(ids)
        if pos + n <= seq_len:
          tokens[r, pos:pos + n] = ids
          is_text[r, pos:pos + n] = True
      else:
        if kind not in KIND_IDS:
          raise ValueError(f"build_batch: examples[{r}][{j}] has kind {kind!r}; expected "
                           f"text/image/audio/video")
        _check_enabled(kind, cfg)
        payload = np.asarray(payload, np.float32)
        same = arrays[kind]
        if same and same[0].shape != payload.shape:
          raise ValueError(f"build_batch: examples[{r}][{j}] {kind} has shape {payload.shape}, "
                           f"but earlier {kind} items have {same[0].shape} (one shape per batch)")
        n = num_tokens(kind, payload.shape, cfg)
        row.append(MediaItem(kind, pos, n, len(same)))
        same.append(payload)
      pos += n
    if pos > seq_len:
      raise ValueError(f"build_batch: examples[{r}] needs {pos} tokens > seq_len={seq_len}")
    segment_ids[r, :pos] = 1
    items.append(row)
  m = max(1, max(len(row) for row in items))
  layout = {k: np.zeros((b, m), np.int32) for k in LAYOUT_KEYS}
  for r, row in enumerate(items):
    for j, it in enumerate(row):
      layout["media_kind"][r, j] = KIND_IDS[it.kind]
      layout["media_index"][r, j] = it.index
      layout["media_start"][r, j] = it.start
      layout["media_len"][r, j] = it.num_tokens
  targets = np.zeros_like(tokens)
  targets[:, :-1] = tokens[:, 1:]
  loss_mask = np.zeros((b, seq_len), np.float32)
  loss_mask[:, :-1] = is_text[:, 1:]
  batch = {"tokens": tokens, "targets": targets, "segment_ids": segment_ids,
           "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (b, seq_len)).copy(),
           "loss_mask": loss_mask, **layout}
  for kind, key in ARRAY_KEYS.items():
    if arrays[kind]:
      batch[key] = np.stack(arrays[kind])
  return batch


def layout_items(batch: dict) -> List[List[MediaItem]]:
  """Reads the layout arrays back into per-row MediaItem lists (host side)."""
  names = {v: k for k, v in KIND_IDS.items()}
  kind, index, start, length = (np.asarray(batch[k]) for k in LAYOUT_KEYS)
  return [[MediaItem(names[int(kind[r, j])], int(start[r, j]), int(length[r, j]),
                     int(index[r, j])) for j in range(kind.shape[1]) if kind[r, j]]
          for r in range(kind.shape[0])]


def validate_batch(batch: dict, cfg: ModelConfig):
  """Host-side checks of a concrete batch's layout; raises ValueError naming key and value."""
  for key in LAYOUT_KEYS:
    if key not in batch:
      raise ValueError(f"multimodal batch: missing layout key {key!r} (have {sorted(batch)})")
  s = np.shape(batch["tokens"])[1]
  for r, row in enumerate(layout_items(batch)):
    for j, it in enumerate(row):
      key = ARRAY_KEYS[it.kind]
      if key not in batch:
        raise ValueError(f"multimodal batch: media_kind[{r},{j}] is {it.kind} but batch has "
                         f"no {key!r} array")
      _check_enabled(it.kind, cfg)
      shape = np.shape(batch[key])
      if not 0 <= it.index < shape[0]:
        raise ValueError(f"multimodal batch: media_index[{r},{j}]={it.index} out of range for "
                         f"{key!r} with {shape[0]} items")
      want = num_tokens(it.kind, shape[1:], cfg)
      if it.num_tokens != want:
        raise ValueError(f"multimodal batch: media_len[{r},{j}]={it.num_tokens} but a {it.kind} "
                         f"of shape {shape[1:]} has {want} tokens under cfg {cfg.name!r}")
      if it.start < 0 or it.start + it.num_tokens > s:
        raise ValueError(f"multimodal batch: media_start[{r},{j}]={it.start} + {it.num_tokens} "
                         f"tokens exceeds sequence length {s}")


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def encode_media(params: dict, batch: dict, cfg: ModelConfig):
  """Runs each present encoder once over all its items.

  Returns (table [R,D] in cfg.dtype, [(kind_id, first_row, tokens_per_item), ...])."""
  encoders = (("image", vision_lib.image_tokens), ("audio", audio_lib.audio_tokens),
              ("video", video_lib.video_tokens))
  parts, spans, base = [], [], 0
  for kind, fn in encoders:
    key = ARRAY_KEYS[kind]
    if key not in batch:
      continue
    _check_enabled(kind, cfg)
    out = fn(params, jnp.asarray(batch[key]), cfg)                  # [N, n, D]
    spans.append((KIND_IDS[kind], base, out.shape[1]))
    parts.append(out.reshape(-1, cfg.d_model))
    base += out.shape[0] * out.shape[1]
  table = (jnp.concatenate(parts, axis=0) if parts
           else jnp.zeros((0, cfg.d_model), jnp.dtype(cfg.dtype)))
  return table, spans


def embed_sequence(params: dict, batch: dict, cfg: ModelConfig) -> Tuple[jax.Array, jax.Array]:
  """Token embeddings with media tokens scattered in. -> (x [B,S,D] cfg.dtype, bidir_ids int32 [B,S]).

  params: the full model tree (uses 'embed', and 'vision' / 'audio' when those media appear).
  The layout arrays are validated on the host when they are concrete (not under jit).
  """
  tokens = jnp.asarray(batch["tokens"])
  b, s = tokens.shape
  if all(_is_concrete(batch[k]) for k in LAYOUT_KEYS if k in batch):
    validate_batch(batch, cfg)
  dt = jnp.dtype(cfg.dtype)
  x = jnp.take(params["embed"]["tokens"], tokens, axis=0).astype(dt)
  table, spans = encode_media(params, batch, cfg)
  kind = jnp.asarray(batch["media_kind"], jnp.int32)
  index = jnp.asarray(batch["media_index"], jnp.int32)
  start = jnp.asarray(batch["media_start"], jnp.int32)
  m = kind.shape[1]
  rows_b = jnp.arange(b, dtype=jnp.int32)[:, None, None]
  src = jnp.full((b, s), -1, jnp.int32)
  bidir = jnp.zeros((b, s), jnp.int32)
  for kind_id, base, n in spans:
    offs = jnp.arange(n, dtype=jnp.int32)
    pos = jnp.where((kind == kind_id)[..., None], start[..., None] + offs, s)     # [B,M,n]
    rows = base + index[..., None] * n + offs
    slot = jnp.broadcast_to(jnp.arange(1, m + 1, dtype=jnp.int32)[None, :, None], pos.shape)
    src = src.at[rows_b, pos].set(rows, mode="drop")                # s (out of range) = skip
    bidir = bidir.at[rows_b, pos].set(slot, mode="drop")
  if table.shape[0]:
    x = jnp.where((src >= 0)[..., None], table[jnp.maximum(src, 0)], x)
  return x, bidir
