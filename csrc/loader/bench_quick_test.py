"""`//csrc/loader:bench --quick` runs every loader over the same records (CI form)."""

from csrc.loader import bench


def test_bench_quick_runs_all_loaders(capsys):
  assert bench.main(["--quick", "--batch=2", "--seq=256"]) == 0
  out = capsys.readouterr().out
  for row in ("python/numpy (same packing)", "c++ loader, 1 thread", "c++ loader, 2 threads",
              "grain (ConcatThenSplit)", "x nano_tiny"):
    assert row in out, out
