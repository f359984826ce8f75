"""//py/gemini/distill:train: the online full-logit KD term against NumPy, sparse modes
train, and a run SIGKILLed mid-way resumes to bit-identical weights."""

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.distill import data as data_lib
from gemini.distill import loop, teacher_targets, train
from gemini.distill.testing import (kill_then_resume, subprocess_env, targets_args,
                                    tiny_teacher)
from gemini.model import spec, transformer
from gemini.train.optimizer import make_optimizer
from gemini.train.train_config import TrainConfig

TINY = ["--d_model=32", "--n_layers=1", "--n_heads=2", "--head_dim=16", "--d_ff=64"]


@pytest.fixture(scope="module")
def kd(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("kd"))
  teacher = tiny_teacher()
  teacher_targets.run(targets_args(out), teacher=teacher, log=lambda _: None)
  return out, teacher


def _args(targets, workdir, *extra):
  return train.parse_args([f"--targets={targets}", f"--workdir={workdir}", "--batch_size=4",
                           "--warmup_steps=1", *TINY, *extra])


def test_online_full_kd_step_equals_numpy(kd, tmp_path):
  out, teacher = kd
  a = _args(out, str(tmp_path / "full"), "--mode=full", "--steps=1", "--temperature=2.0",
            "--hard_weight=0.25")
  state0 = None
  cfg = train.student_config(260, 32, 1, 2, 16, 64, 16)
  logs = []
  train.run(a, teacher=teacher, log=logs.append)
  rec = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")][0]
  # Recompute step 1's loss terms from the initial student and the teacher with NumPy.
  state0 = train.init_fn(cfg, make_optimizer(TrainConfig(steps=1, batch_size=4, seq_len=16), spec.decay_mask(cfg)),
                         0)()
  d = data_lib.WindowData(out, "train", 4, "none", seed=0)
  b = d.next()
  s = np.asarray(transformer.forward(state0["params"], {"tokens": jnp.asarray(b["tokens"])},
                                     cfg)[0], np.float64)
  t = np.asarray(transformer.forward(teacher.params, {"tokens": jnp.asarray(b["tokens"])},
                                     teacher.cfg)[0], np.float64)

  def lsm(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
  p = np.exp(lsm(t / 2.0))
  kd_np = 4.0 * (-(p * lsm(s / 2.0)).sum(-1)).mean()
  hard_np = -np.take_along_axis(lsm(s), b["targets"][..., None], -1).mean()
  np.testing.assert_allclose(rec["kd"], kd_np, rtol=1e-4)
  np.testing.assert_allclose(rec["hard_ce"], hard_np, rtol=1e-4)
  np.testing.assert_allclose(rec["loss"], 0.25 * hard_np + 0.75 * kd_np, rtol=1e-4)


@pytest.mark.parametrize("mode", ["topk", "sampled"])
def test_sparse_modes_learn(kd, tmp_path, mode):
  out, _ = kd
  train.run(_args(out, str(tmp_path / mode), f"--mode={mode}", "--k=8", "--steps=12",
                  "--lr=1e-2"), log=lambda _: None)
  recs = [json.loads(l) for l in open(tmp_path / mode / "metrics.jsonl")]
  assert recs[-1]["kd"] < recs[0]["kd"] - 0.3, (recs[0], recs[-1])


def test_sigkill_then_resume_is_bit_identical(kd, tmp_path):
  out, _ = kd
  env = subprocess_env()

  def cmd(workdir):
    return [sys.executable, "-m", "gemini.distill.train", f"--targets={out}",
            f"--workdir={workdir}", "--mode=topk", "--k=8", "--steps=14", "--batch_size=4",
            "--checkpoint_every=4", "--warmup_steps=2", "--log_every=1", *TINY]
  subprocess.run(cmd(str(tmp_path / "ref")), env=env, check=True, capture_output=True,
                 timeout=300)
  killed, stdout = kill_then_resume(cmd(str(tmp_path / "killed")), str(tmp_path / "killed"),
                                    kill_at=9, env=env)
  assert 9 <= killed < 14
  assert "resumed from checkpoint step" in stdout
  like = jax.eval_shape(lambda: None)
  cfg = train.student_config(260, 32, 1, 2, 16, 64, 16)
  like = train.init_fn(cfg, make_optimizer(TrainConfig(steps=14, batch_size=4, seq_len=16), spec.decay_mask(cfg)), 0)()
  ref = loop.restore_final(str(tmp_path / "ref"), like)
  got = loop.restore_final(str(tmp_path / "killed"), like)
  assert int(got["step"]) == 14
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ref)[0], jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
