"""Multi-process start-up through jax.distributed, driven by flags or environment.

Environment (what launch/ scripts set): JISP_COORDINATOR (host:port),
JISP_NUM_PROCESSES, JISP_PROCESS_ID. On managed clusters (SLURM, Cloud TPU) calling
jax.distributed.initialize() with no arguments auto-detects everything: set
JISP_DISTRIBUTED=auto for that.

Start-up timeout. When a peer never starts, jax.distributed's C++ client aborts the
process after its timeout with a stack dump that names nobody. So before it, process 0
holds a small rendezvous on the coordinator port: every other process connects and says
who it is; when all have arrived process 0 releases them and closes the port, and all
call jax.distributed.initialize (whose client retries until the service is up). If the
start-up timeout (JISP_STARTUP_TIMEOUT seconds, default 300) passes first, every
process stops with one line: process 0 names the process ids that never arrived, the
others say they could not reach process 0. The same exchange catches a process id used
twice and processes started with different process counts.
"""
from __future__ import annotations

import os
import socket
import time

from jisp.core.errors import OptionError, RunError

DEFAULT_STARTUP_TIMEOUT = 300


def _env_int(name: str) -> int | None:
  text = os.environ.get(name)
  if text is None or text == "":
    return None
  try:
    return int(text)
  except ValueError:
    raise OptionError(f"environment variable {name}={text!r} is not an integer") from None


def startup_timeout() -> float:
  t = _env_int("JISP_STARTUP_TIMEOUT")
  if t is not None and t <= 0:
    raise OptionError(f"environment variable JISP_STARTUP_TIMEOUT={t} must be > 0 (seconds)")
  return float(t or DEFAULT_STARTUP_TIMEOUT)


def parse_coordinator(coordinator: str) -> tuple[str, int]:
  host, sep, port = str(coordinator).rpartition(":")
  host = host.strip("[]")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise OptionError(f"--coordinator {coordinator!r} must look like HOST:PORT "
                      "(for example 10.0.0.1:23456)")
  return host, int(port)


def check_layout(num_processes, process_id, coordinator) -> None:
  """OptionError (one line) for a process layout jax.distributed would reject with a
  traceback, or one that would hang."""
  if num_processes is None and process_id is None:
    return
  if num_processes is None or num_processes < 1:
    raise OptionError(f"--num-processes must be >= 1 (got {num_processes}) when "
                      "--process-id is given")
  if process_id is None:
    if num_processes > 1:
      raise OptionError(f"--num-processes {num_processes} needs --process-id (0 .. "
                        f"{num_processes - 1}) for this process")
    return
  if not 0 <= process_id < num_processes:
    raise OptionError(f"--process-id {process_id} is out of range for --num-processes "
                      f"{num_processes} (0 .. {num_processes - 1})")
  if num_processes > 1 and not coordinator:
    raise OptionError(f"--num-processes {num_processes} needs --coordinator HOST:PORT "
                      "(the address of process 0)")
  if coordinator:
    parse_coordinator(coordinator)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Initialise jax.distributed if asked to and not done yet; True when multi-process."""
  import jax
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  coordinator = coordinator or os.environ.get("JISP_COORDINATOR")
  if num_processes is None:
    num_processes = _env_int("JISP_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int("JISP_PROCESS_ID")
  if os.environ.get("JISP_DISTRIBUTED") == "auto":
    jax.distributed.initialize()
    return jax.process_count() > 1
  check_layout(num_processes, process_id, coordinator)
  if coordinator and (num_processes or 1) > 1:
    timeout = startup_timeout()
    rendezvous(coordinator, num_processes, process_id, timeout)
    kwargs = {"initialization_timeout": int(timeout) + 30}
    if os.environ.get("JISP_HEARTBEAT_TIMEOUT"):
      # A lost peer is detected by missed heartbeats; tests shorten the wait.
      kwargs["heartbeat_timeout_seconds"] = _env_int("JISP_HEARTBEAT_TIMEOUT")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, **kwargs)
  return jax.process_count() > 1


# ------------------------------------------------------------------ rendezvous

_HELLO = "jisp-hello"


def rendezvous(coordinator: str, num_processes: int, process_id: int,
               timeout: float) -> None:
  """Wait until all `num_processes` processes are up (see the module docstring)."""
  host, port = parse_coordinator(coordinator)
  if process_id == 0:
    _host_rendezvous(coordinator, port, num_processes, timeout)
  else:
    _join_rendezvous(coordinator, host, port, num_processes, process_id, timeout)


def _listen(port: int) -> socket.socket:
  try:
    if socket.has_dualstack_ipv6():
      return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True,
                                  reuse_port=False)
    return socket.create_server(("", port))
  except OSError as e:
    raise RunError(f"process 0: cannot listen on coordinator port {port} ({e.strerror or e}); "
                   "is another run using it? pick another --coordinator port") from None


def _host_rendezvous(coordinator, port, n, timeout) -> None:
  srv = _listen(port)
  deadline = time.monotonic() + timeout
  peers: dict[int, socket.socket] = {}
  problem = None
  try:
    while len(peers) < n - 1 and problem is None:
      left = deadline - time.monotonic()
      if left <= 0:
        break
      srv.settimeout(min(left, 1.0))
      try:
        conn, _ = srv.accept()
      except socket.timeout:
        continue
      conn.settimeout(10)
      try:
        words = _read_line(conn).split()
      except OSError:
        conn.close()
        continue
      if len(words) < 3 or words[0] != _HELLO or not (words[1].isdigit() and
                                                       words[2].isdigit()):
        conn.close()  # not one of ours (a port scanner, a stale client)
        continue
      pid, their_n = int(words[1]), int(words[2])
      who = " ".join(words[3:])
      if their_n != n:
        problem = (f"process {pid} ({who}) was started with --num-processes {their_n}, "
                   f"process 0 with {n}")
      elif pid in peers:
        problem = f"process id {pid} was started twice (the second: {who})"
      elif not 0 < pid < n:
        problem = f"a process started with --process-id {pid} ({who}), outside 1 .. {n - 1}"
      peers.setdefault(pid, conn)
      if peers.get(pid) is not conn:
        _send(conn, f"error {problem}")
        conn.close()
    if problem is None and len(peers) < n - 1:
      missing = sorted(set(range(1, n)) - set(peers))
      problem = (f"process{'es' if len(missing) > 1 else ''} "
                 f"{', '.join(map(str, missing))} of {n} never arrived at the coordinator "
                 f"{coordinator} within {timeout:.0f} s (JISP_STARTUP_TIMEOUT); start "
                 f"every process with the same --coordinator and --num-processes")
    for conn in peers.values():
      _send(conn, "go" if problem is None else f"error {problem}")
    for conn in peers.values():  # let the clients close first (no TIME_WAIT on the port)
      try:
        conn.settimeout(5)
        conn.recv(1)
      except OSError:
        pass
      conn.close()
  finally:
    srv.close()
  if problem is not None:
    raise RunError(f"process 0: {problem}")


def _join_rendezvous(coordinator, host, port, n, pid, timeout) -> None:
  deadline = time.monotonic() + timeout
  conn = None
  while conn is None:
    try:
      conn = socket.create_connection((host, port), timeout=5)
    except OSError:
      if time.monotonic() > deadline:
        raise RunError(f"process {pid}: could not reach process 0 at the coordinator "
                       f"{coordinator} within {timeout:.0f} s (JISP_STARTUP_TIMEOUT); is "
                       "process 0 running, with this address?") from None
      time.sleep(0.25)
  try:
    _send(conn, f"{_HELLO} {pid} {n} host={socket.gethostname()} pid={os.getpid()}")
    conn.settimeout(max(deadline - time.monotonic(), 0) + 30)
    try:
      reply = _read_line(conn)
    except OSError:
      reply = ""
  finally:
    conn.close()
  if reply == "go":
    return
  if reply.startswith("error "):
    raise RunError(f"process {pid}: start-up failed: {reply[len('error '):]}")
  raise RunError(f"process {pid}: process 0 at {coordinator} stopped during start-up")


def _send(conn: socket.socket, text: str) -> None:
  try:
    conn.sendall((text + "\n").encode())
  except OSError:
    pass


def _read_line(conn: socket.socket) -> str:
  buf = b""
  while not buf.endswith(b"\n") and len(buf) < 4096:
    chunk = conn.recv(4096)
    if not chunk:
      break
    buf += chunk
  return buf.decode(errors="replace").strip()


# ------------------------------------------------------------------ lockstep programs

class Lockstep:
  """A jitted function whose first run of each input layout starts on every process at
  once.

  XLA:CPU sets up a program's cross-process collectives (Gloo) when it first runs, and
  gives up after about 30 s if a peer is not there yet; a loaded host can take longer
  than that to compile the same program in one process than in another. So with several
  processes each new layout is compiled ahead of time, the processes meet at a
  coordination-service barrier (JISP_STARTUP_TIMEOUT), and the compiled program is then
  run (and kept). One process: the plain jitted call.
  """

  def __init__(self, fn, name: str):
    self.fn, self.name = fn, name
    self._compiled: dict = {}

  def __call__(self, *args):
    import jax
    if jax.process_count() == 1:
      return self.fn(*args)
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((tuple(x.shape), str(x.dtype), getattr(x, "sharding", None))
                          for x in leaves))
    compiled = self._compiled.get(key)
    if compiled is None:
      compiled = self.fn.lower(*args).compile()
      barrier(f"jisp-{self.name}-{len(self._compiled)}")
      self._compiled[key] = compiled
    return compiled(*args)


def barrier(name: str) -> None:
  """Wait until every process reached `name` (the coordination service, not a collective)."""
  import jax
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  if jax.process_count() == 1 or client is None:
    return
  client.wait_at_barrier(name, int(startup_timeout() * 1000))
