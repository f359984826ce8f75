"""The code-execution sandbox stops hostile samples and scores them failed."""

import time

import pytest

from gemini.eval import sandbox

SB = sandbox.Sandbox(sandbox.Limits(timeout=3.0))

SOLUTION = "def add(a, b):\n  return a + b\n"
CHECK = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_correct_sample_passes_and_wrong_fails():
  assert SB.run(SOLUTION + CHECK).passed
  r = SB.run("def add(a, b):\n  return a - b\n" + CHECK)
  assert not r.passed and r.status == "failed" and "AssertionError" in r.stderr_tail


@pytest.mark.parametrize("name,body,status", [
    ("fork", "import os\nos.fork()\n", "failed"),
    ("subprocess", "import subprocess\nsubprocess.run(['sleep', '60'])\n", "failed"),
    ("system", "import os\nos.system('sleep 60')\n", "failed"),
    ("sleep", "import time\ntime.sleep(60)\n", "timeout"),
    ("busy", "while True:\n  pass\n", "timeout"),
    ("alloc_10gb", "x = bytearray(10 * 2**30)\n", "failed"),
    ("socket", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n", "failed"),
    ("big_file", "open('f', 'wb').write(b'x' * (100 << 20))\n", "failed"),
    ("early_exit", "import sys\nsys.exit(0)\n", "failed"),
])
def test_hostile_sample_is_stopped_and_failed(name, body, status):
  t0 = time.perf_counter()
  r = SB.run(SOLUTION + body + CHECK)
  assert not r.passed, name
  assert r.status == status, (name, r)
  assert time.perf_counter() - t0 < SB.limits.timeout + 5


def test_network_namespace_blocks_sockets_without_the_hook():
  """The namespace itself, independent of the audit hook: /proc/net/dev (which shows the
  calling process's network namespace) lists only loopback."""
  if not SB.netns:
    pytest.skip("unshare -n is not permitted on this machine; only the audit hook applies")
  prog = ("lines = open('/proc/net/dev').read().splitlines()[2:]\n"
          "names = [l.split(':')[0].strip() for l in lines]\nassert names == ['lo'], names\n")
  assert SB.run(prog).passed
