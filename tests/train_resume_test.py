"""End to end: a training run SIGKILLed at an arbitrary step and resumed from its newest
complete checkpoint ends with parameters bit-identical to an uninterrupted run.

Runs `gemini/train/main.py` (the //py/gemini/train binary) as subprocesses on a tiny
nano_tiny (d_model 64, 2 layers, vocab 256), synthetic data, 1 device.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "py", "gemini", "train", "main.py")
TINY = ["--config=nano_tiny", "--config.d_model=64", "--config.n_layers=2",
        "--config.n_heads=2", "--config.head_dim=32", "--config.d_ff=128",
        "--config.vocab_size=256"]


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "py"), ROOT] + sys.path)
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)
  return env


def _cmd(workdir, npz):
  return [sys.executable, MAIN, *TINY, f"--workdir={workdir}", "--steps=14", "--batch_size=4",
          "--seq_len=32", "--data=synthetic", "--checkpoint_every=4", "--keep_checkpoints=2",
          "--log_every=0", "--measure_peak=false",
          "--compilation_cache_dir=/tmp/gemini-jax-cache", "--warmup_steps=3",
          f"--final_params_npz={npz}"]


def _last_step(metrics_path):
  if not os.path.exists(metrics_path):
    return 0
  steps = [0]
  with open(metrics_path) as f:
    for line in f:
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        continue
      if "event" not in r:
        steps.append(r["step"])
  return max(steps)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  ref_npz = str(tmp_path / "ref.npz")
  subprocess.run(_cmd(str(tmp_path / "ref"), ref_npz), env=_env(), check=True,
                 capture_output=True, timeout=240)

  work = str(tmp_path / "killed")
  npz = str(tmp_path / "resumed.npz")
  proc = subprocess.Popen(_cmd(work, npz), env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  kill_at = 9  # Between checkpoints 8 and 12; checkpoint 8 may still be in flight.
  deadline = time.time() + 240
  while _last_step(os.path.join(work, "metrics.jsonl")) < kill_at:
    assert proc.poll() is None, "training exited before it could be killed"
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = _last_step(os.path.join(work, "metrics.jsonl"))
  assert kill_at <= killed_at < 14
  assert not os.path.exists(npz)

  out = subprocess.run(_cmd(work, npz), env=_env(), check=True, capture_output=True,
                       text=True, timeout=240)
  assert "resumed from checkpoint step" in out.stdout
  resumed_from = int(out.stdout.split("resumed from checkpoint step")[1].split()[0])
  assert resumed_from in (4, 8) and resumed_from <= killed_at

  ref, got = np.load(ref_npz), np.load(npz)
  assert sorted(ref.files) == sorted(got.files) and len(ref.files) > 5
  for k in ref.files:
    np.testing.assert_array_equal(ref[k], got[k], err_msg=k)
