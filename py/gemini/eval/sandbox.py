"""Runs untrusted generated Python in a subprocess with limits; reports pass/fail.

What is enforced (every run; limits set by prlimit(1) on the exec'd process):
  - wall time: the process group is killed (SIGKILL) at `timeout` s; RLIMIT_CPU = timeout+1 s
  - memory: RLIMIT_AS (default 1 GiB of address space), so a large allocation raises MemoryError
  - files: RLIMIT_FSIZE (default 16 MiB per written file), RLIMIT_NOFILE 64, no core dumps;
    the working directory is a fresh temporary directory removed afterwards
  - processes: RLIMIT_NPROC (the kernel does not apply it to root), and an audit hook
    (sys.addaudithook, installed before the sample runs and impossible to remove from Python)
    that raises PermissionError on os.fork/forkpty/system/exec/spawn/posix_spawn,
    subprocess.Popen, ctypes.dlopen and socket creation/connection
  - network: the process runs in a new, empty network namespace (`unshare -n`) when the
    machine allows it (checked once per Sandbox); otherwise only the audit hook blocks sockets
  - isolation of the interpreter: `python -I` (no PYTHONPATH, no user site, no cwd on sys.path)
A sample passes only if the process exits 0 AND prints a per-run random token that the
program prints after the tests (an early sys.exit(0) is not a pass).
Not enforced: CPU-time sharing with other users, read access to the file system.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

_GUARD = r'''
import sys as _sys
def _guard(event, args, _blocked=frozenset((
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
    "subprocess.Popen", "ctypes.dlopen", "socket.__new__", "socket.connect", "socket.bind",
    "socket.getaddrinfo", "pty.spawn"))):
  if event in _blocked:
    raise PermissionError("sandbox: " + event + " is not allowed")
_sys.addaudithook(_guard)
del _guard
'''


@dataclasses.dataclass(frozen=True)
class Limits:
  timeout: float = 5.0
  memory_bytes: int = 1 << 30
  file_bytes: int = 16 << 20
  processes: int = 32
  open_files: int = 64


@dataclasses.dataclass(frozen=True)
class Result:
  passed: bool
  status: str          # "passed" | "failed" | "timeout"
  returncode: Optional[int]
  seconds: float
  stderr_tail: str


def _network_namespace_available() -> bool:
  exe = shutil.which("unshare")
  if not exe:
    return False
  try:
    return subprocess.run([exe, "-n", "true"], capture_output=True, timeout=10).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


def _limit_args(limits: Limits):
  """prlimit(1) options (limits are set in the exec'd process, not by a preexec_fn in a
  threaded parent)."""
  cpu = int(limits.timeout) + 1
  return [f"--cpu={cpu}", f"--as={limits.memory_bytes}", f"--fsize={limits.file_bytes}",
          f"--nproc={limits.processes}", f"--nofile={limits.open_files}", "--core=0"]


class Sandbox:

  def __init__(self, limits: Limits = Limits(), use_netns: Optional[bool] = None):
    self.limits = limits
    self.netns = _network_namespace_available() if use_netns is None else use_netns

  def run(self, program: str) -> Result:
    """Runs `program` (Python source); it passes if it finishes without error."""
    token = secrets.token_hex(16)
    source = _GUARD + "\n" + program + f"\n\nprint({token!r})\n"
    work = tempfile.mkdtemp(prefix="gemini-sandbox-")
    path = os.path.join(work, "program.py")
    with open(path, "w") as f:
      f.write(source)
    prlimit = shutil.which("prlimit")
    if not prlimit:
      raise RuntimeError("sandbox: prlimit (util-linux) is needed to set resource limits")
    cmd = ([prlimit] + _limit_args(self.limits) + ["--"]
           + ([shutil.which("unshare"), "-n"] if self.netns else []) + [sys.executable, "-I", path])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={"PATH": "/usr/bin:/bin"})
    try:
      out, err = proc.communicate(timeout=self.limits.timeout)
      status = "passed" if proc.returncode == 0 and token in out.decode(errors="replace") else "failed"
    except subprocess.TimeoutExpired:
      _kill_group(proc.pid)
      out, err = proc.communicate()
      status = "timeout"
    finally:
      _kill_group(proc.pid)        # children left behind in the group
      shutil.rmtree(work, ignore_errors=True)
    return Result(status == "passed", status, proc.returncode, time.perf_counter() - t0,
                  err.decode(errors="replace")[-500:])


def _kill_group(pgid: int):
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
