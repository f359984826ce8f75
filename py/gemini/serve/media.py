"""Inline media of a request -> the arrays the model's encoders take (host side, NumPy).

    image  PNG / JPEG / WebP / GIF (Pillow) ─convert to vision.channels (L, RGB, RGBA)─
           ─resize (bicubic) to the square vision.image_size─▶ f32 [S,S,C] in [0,1]
    audio  WAV (scipy.io.wavfile: PCM u8/16/24/32 or IEEE float) ─channels averaged─
           ─polyphase resampling to audio.sample_rate (16 kHz)─▶ f32 [L] in [-1,1]
    video  animated GIF / PNG (APNG) / WebP, decoded frame by frame by Pillow ─frames sampled
           at `MediaLimits.video_fps` from the per-frame durations─ each frame as an image ─▶
           f32 [T,S,S,C]. No MP4/WebM/QuickTime decoder is in tools/requirements.lock, so
           those mime types are refused (400) with the frame-sequence forms named.

Images are not aspect-preserved or cropped: the whole picture is resized to the square the
ViT was built for, with values in [0,1] (what `multimodal.build_batch` is given).
Every failure is a MediaError whose message names what was wrong; the API layer adds the
request field (e.g. `messages[0].content[1].image_url`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import math
import re
import warnings
from typing import Tuple

import numpy as np
import PIL.Image
import PIL.ImageSequence
import scipy.io.wavfile
import scipy.signal

from gemini.config import AudioConfig, ModelConfig, VisionConfig

IMAGE_MIMES = ("image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif")
AUDIO_MIMES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
VIDEO_MIMES = ("video/gif", "video/png", "video/apng", "video/webp")
CONTAINER_VIDEO = ("video/mp4", "video/webm", "video/quicktime", "video/mpeg", "video/x-msvideo",
                   "video/x-matroska", "video/3gpp", "video/x-flv", "video/mov", "video/avi",
                   "video/wmv", "video/mpg")
_PIL_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "MPO"}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
DEFAULT_FRAME_MS = 100          # frame duration assumed when the file gives none


class MediaError(ValueError):
  """A media part that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class MediaLimits:
  max_items: int = 8                  # media parts per request
  max_audio_seconds: float = 30.0
  video_fps: float = 1.0              # frames sampled per second of video
  max_video_frames: int = 16          # after sampling
  max_pixels: int = 4096 * 4096       # per image / frame, before resizing
  max_source_frames: int = 4096       # frames in an animated file
  max_video_pixels: int = 1 << 28     # frames x width x height decoded for one video


@dataclasses.dataclass
class Media:
  """One decoded part: image f32 [S,S,C], audio f32 [L], video f32 [T,S,S,C]."""
  kind: str
  array: np.ndarray
  field: str


def kind_of_mime(mime: str) -> str:
  """'image' | 'audio' | 'video' for an accepted mime type, else MediaError listing them."""
  m = mime.split(";")[0].strip().lower()
  if m in IMAGE_MIMES:
    return "image"
  if m in AUDIO_MIMES:
    return "audio"
  if m in VIDEO_MIMES:
    return "video"
  if m in CONTAINER_VIDEO or m.startswith("video/"):
    raise MediaError(f"mime type {mime!r}: this server has no video container decoder (Pillow "
                     f"only); send the frames as an animated GIF, PNG (APNG) or WebP with mime "
                     f"type one of {', '.join(VIDEO_MIMES)}")
  raise MediaError(f"mime type {mime!r} is not supported; images: {', '.join(IMAGE_MIMES)}; "
                   f"audio: {', '.join(AUDIO_MIMES)}; video: {', '.join(VIDEO_MIMES)}")


def decode_base64(data, what: str = "data") -> bytes:
  """Standard or URL-safe base64 (whitespace ignored) -> bytes; MediaError if it is not."""
  if not isinstance(data, str):
    raise MediaError(f"{what} must be a base64 string, got {type(data).__name__}")
  s = re.sub(r"\s+", "", data)
  if not s:
    raise MediaError(f"{what} is empty")
  try:
    if "-" in s or "_" in s:
      return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    return base64.b64decode(s, validate=True)
  except (binascii.Error, ValueError) as e:
    raise MediaError(f"{what} is not valid base64: {e}") from e


def parse_data_url(url) -> Tuple[str, bytes]:
  """'data:<mime>[;...];base64,<data>' -> (mime, bytes); other URLs are refused (the server
  fetches nothing)."""
  if not isinstance(url, str):
    raise MediaError(f"url must be a string, got {type(url).__name__}")
  m = re.match(r"data:([^;,]*)((?:;[^;,]*)*),", url[:512])
  if not m:
    raise MediaError(f"url {url[:40]!r}... is not a data: URL (this server fetches no remote "
                     f"media; send data:<mime>;base64,<data>)")
  if ";base64" not in m.group(2).lower():
    raise MediaError("data: URL must be base64-encoded (';base64,')")
  return m.group(1) or "application/octet-stream", decode_base64(url[m.end():], "data: URL")


def _open(raw: bytes, limits: MediaLimits) -> PIL.Image.Image:
  try:
    im = PIL.Image.open(io.BytesIO(raw))
  except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, ValueError, ...
    raise MediaError(f"not a decodable image ({len(raw)} bytes): {type(e).__name__}: {e}") from e
  if im.format not in _PIL_FORMATS:
    raise MediaError(f"image format {im.format} is not PNG/JPEG/WebP/GIF")
  w, h = im.size
  if w < 1 or h < 1 or w * h > limits.max_pixels:
    raise MediaError(f"image of {w}x{h} pixels is outside 1..{limits.max_pixels} pixels")
  return im


def _to_array(frame: PIL.Image.Image, vcfg: VisionConfig) -> np.ndarray:
  mode = _MODES.get(vcfg.channels)
  if mode is None:
    raise MediaError(f"vision.channels={vcfg.channels} has no image mode (1, 3 or 4)")
  s = vcfg.image_size
  img = frame.convert(mode).resize((s, s), PIL.Image.Resampling.BICUBIC)
  arr = np.asarray(img, np.float32) / 255.0
  return arr.reshape(s, s, vcfg.channels)


def decode_image(raw: bytes, vcfg: VisionConfig, limits: MediaLimits) -> np.ndarray:
  """Image bytes -> f32 [S,S,C] in [0,1] (the first frame of an animated file)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    im = _open(raw, limits)
    try:
      im.load()
      return _to_array(im, vcfg)
    except MediaError:
      raise
    except Exception as e:
      raise MediaError(f"corrupt {im.format} image: {type(e).__name__}: {e}") from e


def frame_picks(start_ms: float, end_ms: float, fps: float) -> int:
  """How many of the sample times t = 0, 1/fps, 2/fps, ... fall in a frame shown over
  [start_ms, end_ms) (the frame on screen at t is the one sampled)."""
  first = math.ceil(start_ms / 1000.0 * fps - 1e-9)
  end = math.ceil(end_ms / 1000.0 * fps - 1e-9)
  return max(0, end - first)


def decode_video(raw: bytes, vcfg: VisionConfig, limits: MediaLimits) -> np.ndarray:
  """Animated GIF/PNG/WebP bytes -> f32 [T,S,S,C], frames sampled at limits.video_fps.
  One pass over the frames; only sampled frames are kept (as S x S arrays), so memory is
  bounded by max_video_frames whatever the file's frame count."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    im = _open(raw, limits)
    try:
      n = int(getattr(im, "n_frames", 1))
      if n > limits.max_source_frames:
        raise MediaError(f"video has {n} frames > {limits.max_source_frames}")
      w, h = im.size
      if n * w * h > limits.max_video_pixels:
        raise MediaError(f"video of {n} frames of {w}x{h} is over {limits.max_video_pixels} "
                         "decoded pixels")
      out, t_ms = [], 0.0
      for fr in PIL.ImageSequence.Iterator(im):
        d = float(fr.info.get("duration") or DEFAULT_FRAME_MS)
        k = frame_picks(t_ms, t_ms + d, limits.video_fps)
        t_ms += d
        if k and len(out) + k > limits.max_video_frames:
          total = t_ms / 1000.0
          raise MediaError(f"video of at least {total:.2f} s sampled at {limits.video_fps} "
                           f"frames/s gives more than max {limits.max_video_frames} frames")
        if k:
          arr = _to_array(fr, vcfg)
          out += [arr] * k
    except MediaError:
      raise
    except Exception as e:
      raise MediaError(f"corrupt {im.format} video: {type(e).__name__}: {e}") from e
  if not out:
    raise MediaError("video has no frames")
  return np.stack(out)


def decode_wav(raw: bytes, acfg: AudioConfig, limits: MediaLimits) -> np.ndarray:
  """WAV bytes -> mono f32 [L] at acfg.sample_rate."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      rate, data = scipy.io.wavfile.read(io.BytesIO(raw))
  except Exception as e:
    raise MediaError(f"not a readable WAV file ({len(raw)} bytes): {type(e).__name__}: {e}") from e
  if not 1000 <= rate <= 384000:
    raise MediaError(f"WAV sample rate {rate} Hz is outside 1000..384000")
  data = np.asarray(data)
  if data.ndim not in (1, 2) or data.size == 0:
    raise MediaError(f"WAV has no samples (shape {data.shape})")
  if data.dtype == np.uint8:
    x = (data.astype(np.float64) - 128.0) / 128.0
  elif data.dtype.kind == "i":
    x = data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))
  elif data.dtype.kind == "f":
    x = data.astype(np.float64)
  else:
    raise MediaError(f"WAV sample type {data.dtype} is not PCM or float")
  if x.ndim == 2:
    x = x.mean(axis=1)
  if not np.all(np.isfinite(x)):
    raise MediaError("WAV has NaN or infinite samples")
  seconds = len(x) / rate
  if seconds > limits.max_audio_seconds:
    raise MediaError(f"audio of {seconds:.2f} s > max {limits.max_audio_seconds} s")
  if rate != acfg.sample_rate:
    g = math.gcd(int(rate), acfg.sample_rate)
    x = scipy.signal.resample_poly(x, acfg.sample_rate // g, int(rate) // g)
  if len(x) < acfg.hop_length:
    raise MediaError(f"audio of {seconds * 1000:.1f} ms is shorter than one "
                     f"{1000 * acfg.hop_length / acfg.sample_rate:.0f} ms frame")
  return x.astype(np.float32)


def decode(kind: str, raw: bytes, cfg: ModelConfig, limits: MediaLimits) -> np.ndarray:
  """Bytes of one part of `kind` -> its array (see the module docstring)."""
  if kind == "audio":
    if not cfg.audio.enabled:
      raise MediaError(f"model {cfg.name!r} has no audio encoder")
    return decode_wav(raw, cfg.audio, limits)
  if not cfg.vision.enabled:
    raise MediaError(f"model {cfg.name!r} has no vision encoder (text-only)")
  if kind == "image":
    return decode_image(raw, cfg.vision, limits)
  return decode_video(raw, cfg.vision, limits)
