"""The run directory of `jisp train`: checked before any work, and locked while in use.

One trainer per workdir: two of them would log every step twice and overwrite each
other's checkpoints. The lock is an flock on WORKDIR/train.lock, held for the whole run by
process 0 (the only process that writes outside Orbax). The kernel drops it when the
process ends however it ends (kill -9, OOM, power loss on a local disk), so a stale lock
never blocks a re-run: the next trainer simply takes it over. The file's text (pid, host,
start time) is only a description of the holder for the error message.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

from jisp.core.errors import RunError
from jisp.core.fileio import ensure_output_dir, os_error_reason

LOCK_NAME = "train.lock"


def prepare(workdir) -> str:
  """The absolute workdir, created if needed; one-line RunError when it is a file, lies
  below a file, or cannot be written (read-only file system, permissions)."""
  path = os.path.abspath(str(workdir))
  ensure_output_dir(path, "--workdir", error=RunError)
  return path


class WorkdirLock:
  """Exclusive lock on a workdir; `acquire()` raises RunError naming the holder."""

  def __init__(self, workdir):
    self.workdir = os.path.abspath(str(workdir))
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _describe(_read_holder(fd))
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise RunError(f"{self.workdir}: already in use by another `jisp train` ({holder}); "
                       "wait for it to finish, stop it, or use another --workdir") from None
      raise RunError(f"{self.path}: cannot lock the workdir ({os_error_reason(e)})") from None
    # Ours now (also when a killed trainer left the file behind): describe the holder.
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fd, self._fd = self._fd, None
      try:
        os.ftruncate(fd, 0)
      except OSError:
        pass
      os.close(fd)  # closing drops the flock

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _read_holder(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    return {}


def _describe(holder: dict) -> str:
  if not holder.get("pid"):
    return "holder unknown"
  since = f", since {holder['started']}" if holder.get("started") else ""
  return f"pid {holder['pid']} on host {holder.get('host', '?')}{since}"
