"""Speech from the Debian text-to-speech engines, as 16 kHz mono float clips.

    Voice(engine, name, rate, pitch) ──synthesize(voice, texts)──▶ [f32 [L_i]] at 16 kHz

Engines (Debian packages, listed in tools/apt-packages.txt):
  espeak-ng  formant synthesis; a voice is an English accent plus a variant ("en-gb+m3"),
             rate in words per minute and pitch 0-99 vary it further; one process per clip
             (it starts in milliseconds).
  flite      CMU Flite's built-in voices (kal, kal16, awb, rms, slt); one process per clip.
  festival   the installed festvox voices (kal and ked diphones, slt HTS); festival starts in
             ~0.4 s, so one `festival --pipe` process per speaker synthesises a whole batch.
             The diphone voices take a rate (Duration_Stretch = 100 / rate) and a pitch (the
             target F0 mean in Hz, int_lr_params); the HTS voice ignores both, so they are
             refused for it.

Every engine writes a RIFF WAV file (8-48 kHz); it is averaged to mono, scaled to [-1, 1],
resampled to 16 kHz by polyphase filtering and trimmed of leading and trailing silence
(samples below 1 % of the clip's peak, with 50 ms kept on each side).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import tempfile
from typing import List, Sequence, Tuple

import numpy as np
import scipy.io.wavfile
import scipy.signal

RATE = 16000
ENGINES = ("espeak-ng", "flite", "festival")


@dataclasses.dataclass(frozen=True)
class Voice:
  engine: str          # one of ENGINES
  name: str            # espeak-ng "accent+variant", flite voice, festival voice (no "voice_")
  rate: int = 0        # espeak-ng words per minute; festival % of speed (0 = the default)
  pitch: int = -1      # espeak-ng pitch 0..99; festival F0 mean in Hz (-1 = the default)

  @property
  def speaker(self) -> str:
    """The voice without its rate and pitch: what train/test splits hold apart."""
    return f"{self.engine}:{self.name}"


def missing_engines() -> List[str]:
  return [e for e in ENGINES if shutil.which(e) is None]


def load_16k(path: str) -> np.ndarray:
  """A WAV file -> mono f32 at 16 kHz, silence trimmed."""
  rate, data = scipy.io.wavfile.read(path)
  x = data.astype(np.float32)
  if data.dtype == np.int16:
    x /= 32768.0
  elif data.dtype == np.uint8:
    x = (x - 128.0) / 128.0
  if x.ndim == 2:
    x = x.mean(axis=1)
  if rate != RATE:
    g = math.gcd(RATE, int(rate))
    x = scipy.signal.resample_poly(x, RATE // g, int(rate) // g).astype(np.float32)
  return trim(x)


def trim(x: np.ndarray, floor: float = 0.01, keep_s: float = 0.05) -> np.ndarray:
  """x without the leading/trailing samples below floor * peak (keep_s seconds kept)."""
  loud = np.flatnonzero(np.abs(x) >= floor * max(float(np.abs(x).max()), 1e-9))
  if loud.size == 0:
    return x[:0]
  keep = int(keep_s * RATE)
  return x[max(loud[0] - keep, 0):loud[-1] + keep + 1]


def _espeak(voice: Voice, text: str, out: str) -> None:
  cmd = ["espeak-ng", "-v", voice.name, "-w", out]
  if voice.rate:
    cmd += ["-s", str(voice.rate)]
  if voice.pitch >= 0:
    cmd += ["-p", str(voice.pitch)]
  subprocess.run(cmd + [text], check=True, capture_output=True, timeout=60)


def _flite(voice: Voice, text: str, out: str) -> None:
  subprocess.run(["flite", "-voice", voice.name, "-t", text, "-o", out], check=True,
                 capture_output=True, timeout=60)


def _festival(pairs: Sequence[Tuple[Voice, str]], outs: Sequence[str]) -> None:
  script = []
  for (voice, text), out in zip(pairs, outs):
    if (voice.rate or voice.pitch >= 0) and not voice.name.endswith("_diphone"):
      raise ValueError(f"speech_synth: {voice}: only festival's diphone voices take a rate "
                       "or pitch (the HTS voices ignore Duration_Stretch and int_lr_params)")
    script.append(f"(voice_{voice.name})")           # resets the previous clip's settings
    if voice.rate:
      script.append(f"(Parameter.set 'Duration_Stretch {100.0 / voice.rate:.4f})")
    if voice.pitch >= 0:
      script.append(f"(set! int_lr_params '((target_f0_mean {voice.pitch}) (target_f0_std 14) "
                    "(model_f0_mean 170) (model_f0_std 34)))")
    quoted = text.replace("\\", "").replace('"', "")
    script.append(f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{out}" \'riff)')
  subprocess.run(["festival", "--pipe"], input="\n".join(script).encode(), check=True,
                 capture_output=True, timeout=60 + 5 * len(pairs))


def synthesize(voice: Voice, texts: Sequence[str]) -> List[np.ndarray]:
  """Each text spoken by `voice` -> 16 kHz f32 clips (silence trimmed)."""
  return speak([(voice, t) for t in texts])


def speak(pairs: Sequence[Tuple[Voice, str]]) -> List[np.ndarray]:
  """(voice, text) pairs of one engine -> 16 kHz f32 clips (silence trimmed); festival runs
  them in one process. Raises RuntimeError naming the voice and text when an engine writes no
  audio."""
  engines = {v.engine for v, _ in pairs}
  if not engines <= set(ENGINES) or len(engines) > 1:
    raise ValueError(f"speech_synth: engines {sorted(engines)}: expected one of {ENGINES}")
  with tempfile.TemporaryDirectory(prefix="gemini-tts-") as tmp:
    outs = [os.path.join(tmp, f"{i}.wav") for i in range(len(pairs))]
    if engines == {"festival"}:
      _festival(pairs, outs)
    else:
      for (voice, text), out in zip(pairs, outs):
        (_espeak if voice.engine == "espeak-ng" else _flite)(voice, text, out)
    clips = []
    for (voice, text), out in zip(pairs, outs):
      clip = load_16k(out) if os.path.exists(out) else np.zeros(0, np.float32)
      if clip.size < RATE // 20:
        raise RuntimeError(f"speech_synth: {voice} wrote no audio for {text!r}")
      clips.append(clip)
    return clips
