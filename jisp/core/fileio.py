"""Atomic file writes and JSON reads with one-line errors.

A reader never sees a half-written file: data goes to a temporary file in the same folder,
is flushed to disk, gets the usual 0644 permissions and is renamed over the target.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from jisp.core.errors import DataError


@contextlib.contextmanager
def atomic_path(path, mode: int = 0o644) -> Iterator[Path]:
  """Yields a temporary path next to `path`; on success it is renamed to `path`.

  For writers that want a file name (tifffile, TFRecord writers). On any exception the
  temporary file is removed and `path` is left as it was.
  """
  path = Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  tmp = Path(tmp)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def atomic_write_bytes(path, data: bytes, mode: int = 0o644) -> Path:
  with atomic_path(path, mode) as tmp:
    tmp.write_bytes(data)
  return Path(path)


def atomic_write_text(path, text: str, mode: int = 0o644) -> Path:
  return atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path, obj: Any, *, indent: int = 1, sort_keys: bool = False) -> Path:
  return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def read_json(path, what: str = "JSON file", error=DataError) -> Any:
  """The parsed file; `error` (one line naming the file) if it is missing or broken."""
  path = Path(path)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise error(f"{path}: no such {what}") from None
  except json.JSONDecodeError as e:
    raise error(f"{path}: {what} is not valid JSON ({e})") from None
  except OSError as e:
    raise error(f"{path}: cannot read {what} ({e.strerror or e})") from None


def load_manifest(data_dir) -> dict:
  """manifest.json of a prepared data folder (`jisp prepare`)."""
  path = Path(data_dir) / "manifest.json"
  if not Path(data_dir).is_dir():
    raise DataError(f"{data_dir}: no such data folder")
  man = read_json(path, "manifest")
  if not isinstance(man, dict):
    raise DataError(f"{path}: manifest must be a JSON object")
  return man


def os_error_reason(e: OSError) -> str:
  """The short cause of an OSError for a one-line message."""
  import errno
  if e.errno == errno.EROFS:
    return "read-only file system"
  if e.errno == errno.ENOSPC:
    return "no space left on device"
  return e.strerror or str(e)


def ensure_output_dir(path, what: str = "output folder", error=DataError) -> Path:
  """Creates `path` if needed and checks that files can be written there, before any
  expensive work; a one-line `error` (a UserError type) naming it otherwise."""
  path = Path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except FileExistsError:
    raise error(f"{path}: {what} is an existing file, not a folder") from None
  except NotADirectoryError:
    raise error(f"{path}: {what} lies below a file") from None
  except OSError as e:
    raise error(f"{path}: cannot create {what} ({os_error_reason(e)})") from None
  if not path.is_dir():
    raise error(f"{path}: {what} is an existing file, not a folder")
  try:
    fd, probe = tempfile.mkstemp(prefix=".jisp-write-test.", dir=path)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise error(f"{path}: cannot write to {what} ({os_error_reason(e)})") from None
  return path
