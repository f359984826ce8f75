"""A short Fashion-MNIST run must learn (manual: a few minutes of training)."""

from gemini.tasks import fashion_mnist


def test_fashion_mnist_short_run_learns(tmp_path):
  res = fashion_mnist.run(["--steps=40", "--train_limit=1024", "--test_limit=250",
                           f"--out={tmp_path}"], log=lambda s: None)
  assert res["exact"] > 0.4                                # chance is 0.1
  assert (tmp_path / "loss.png").exists() and (tmp_path / "metrics.jsonl").exists()
