"""Chaos: a training run SIGKILLed at random steps, its newest checkpoint damaged after each
kill, still ends bit-identical to an unbroken run, and no intact checkpoint is lost.

Each round starts `gemini/train/main.py` (tiny nano_tiny, synthetic data, a checkpoint every
2 steps, keep 2), kills it with SIGKILL once it has passed a random step, then damages the
newest finished step in one of five ways: a truncated array file, a deleted array file, 16
flipped bytes in an array file, flipped bytes in Orbax's metadata, an emptied step directory.
The next round must say it resumed from the newest step other than the damaged one (the
damaged step set aside in checkpoints.rejected/, not deleted), and after the last round an
undisturbed run to the end must give parameters equal bit for bit to the reference run's.
"""

import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "py", "gemini", "train", "main.py")
TINY = ["--config=nano_tiny", "--config.d_model=32", "--config.n_layers=1",
        "--config.n_heads=2", "--config.head_dim=16", "--config.d_ff=64",
        "--config.vocab_size=64"]
STEPS = 24
FAULTS = ("truncate", "delete", "flip_array", "flip_metadata", "empty_dir")


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "py"), ROOT] + sys.path)
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)
  return env


def _cmd(workdir, npz):
  return [sys.executable, MAIN, *TINY, f"--workdir={workdir}", f"--steps={STEPS}",
          "--batch_size=2", "--seq_len=16", "--data=synthetic", "--checkpoint_every=2",
          "--keep_checkpoints=2", "--log_every=0", "--measure_peak=false",
          "--compilation_cache_dir=/tmp/gemini-jax-cache", "--warmup_steps=2",
          f"--final_params_npz={npz}"]


def _lines(path):
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for _ in f)


def _last_step(metrics_path, skip=0):
  """The last step recorded in metrics.jsonl after its first `skip` lines (0 if none)."""
  steps = [0]
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      for i, line in enumerate(f):
        if i < skip:
          continue
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          continue
        if "event" not in r:
          steps.append(r["step"])
  return steps[-1]


def _steps(ckpt_dir):
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) \
      if os.path.isdir(ckpt_dir) else []


def _damage(step_dir, fault, rng):
  arrays = sorted(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True),
                  key=os.path.getsize)
  target = arrays[-1]
  if fault == "truncate":
    with open(target, "r+b") as f:
      f.truncate(rng.randrange(1, os.path.getsize(target)))
  elif fault == "delete":
    os.remove(target)
  elif fault == "flip_array":
    b = bytearray(open(target, "rb").read())
    at = rng.randrange(0, len(b) - 16)
    b[at:at + 16] = bytes(x ^ 0xFF for x in b[at:at + 16])
    open(target, "wb").write(bytes(b))
  elif fault == "flip_metadata":
    meta = os.path.join(step_dir, "state", "_METADATA")
    b = bytearray(open(meta, "rb").read())
    at = rng.randrange(0, len(b))
    b[at] ^= 0x5A
    open(meta, "wb").write(bytes(b))
  else:
    for entry in os.listdir(step_dir):
      p = os.path.join(step_dir, entry)
      shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


def test_killed_and_damaged_run_resumes_and_ends_bit_identical(tmp_path):
  ref_npz = str(tmp_path / "ref.npz")
  subprocess.run(_cmd(str(tmp_path / "ref"), ref_npz), env=_env(), check=True,
                 capture_output=True, timeout=300)

  seed = int(os.environ.get("CHAOS_SEED", "15"))
  rng = random.Random(seed)
  work = str(tmp_path / "chaos")
  ckpt_dir = os.path.join(work, "checkpoints")
  npz = str(tmp_path / "chaos.npz")
  expected_resume, injected, survived = None, 0, 0
  for fault in FAULTS:
    log_path = str(tmp_path / f"round_{injected}.log")
    with open(log_path, "w") as log:
      metrics = os.path.join(work, "metrics.jsonl")
      seen = _lines(metrics)
      proc = subprocess.Popen(_cmd(work, npz), env=_env(), stdout=log, stderr=subprocess.STDOUT)
      kill_at = min(STEPS - 2, (expected_resume or 0) + rng.randint(3, 7))
      deadline = time.time() + 300
      while _last_step(metrics, seen) < kill_at or \
          not [s for s in _steps(ckpt_dir) if s > (expected_resume or 0)]:
        assert proc.poll() is None, open(log_path).read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    out = open(log_path).read()
    if expected_resume is not None:
      got = re.findall(r"resumed from checkpoint step (\d+)", out)
      want = f"resumed from checkpoint step {expected_resume}" if expected_resume else None
      assert (got == [str(expected_resume)]) if expected_resume else not got, out[-3000:]
      assert "Traceback" not in out and "Event loop is closed" not in out, out[-3000:]
      if want is None or got:
        survived += 1
    steps = _steps(ckpt_dir)
    newest = steps[-1]
    _damage(os.path.join(ckpt_dir, str(newest)), fault, rng)
    injected += 1
    # The newest step apart from the damaged one is what must be restored next.
    expected_resume = steps[-2] if len(steps) > 1 else 0
    print(f"round {injected}: killed after step {kill_at}, checkpoints {steps}, damaged step "
          f"{newest} ({fault}); expecting a resume from step {expected_resume}")

  out = subprocess.run(_cmd(work, npz), env=_env(), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  text = out.stdout + out.stderr
  got = re.findall(r"resumed from checkpoint step (\d+)", text)
  assert (got == [str(expected_resume)]) if expected_resume else not got, text[-3000:]
  assert "Traceback" not in text and "Event loop is closed" not in text
  survived += 1
  rejected = sorted(os.listdir(ckpt_dir + ".rejected"))
  assert len(rejected) == injected, rejected   # Every damaged step kept aside, none deleted.

  ref, got = np.load(ref_npz), np.load(npz)
  assert sorted(ref.files) == sorted(got.files) and len(ref.files) > 5
  for k in ref.files:
    np.testing.assert_array_equal(ref[k], got[k], err_msg=k)
  print(f"chaos (seed {seed}): {injected} faults injected (SIGKILL + damaged newest step), "
        f"{survived} survived; final parameters bit-identical to the unbroken run")
  assert survived == injected
