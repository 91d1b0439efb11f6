#!/usr/bin/env bash
# Run `jisp train` as N processes on this host (127.0.0.1), splitting CPU devices
# among them: the multi-host code path without a cluster.
#
#   launch/local_multiprocess.sh N CONFIG WORKDIR [--config.a.b=value ...]
#
# Env: JISP_DEVICES_PER_PROCESS (default 8/N, at least 1), JISP_PORT (default: a free
# port), JISP_PYTHON (default: python3 on PATH). Other XLA_FLAGS of the caller are kept;
# only the device count is replaced.
# If any process fails or is lost, the others are stopped (they could only hang on the
# collective until jax.distributed's heartbeat gives up) and the script exits with that
# process's status, after one line naming it; a process still running JISP_STOP_GRACE
# seconds (default 10) after being told to stop is killed: without its peer it can only
# wait on a collective until the heartbeat times out. Checkpoints already written stay valid:
# re-run the same command to resume. Ctrl-C / SIGTERM reach every process as the same
# signal: they agree on a step, save it and exit (130 / 0). A process that never starts
# is named by process 0 after JISP_STARTUP_TIMEOUT seconds (default 300).
set -uo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 N CONFIG WORKDIR [--config.a.b=value ...]" >&2
  exit 2
fi
N=$1; CONFIG=$2; WORKDIR=$3; shift 3
PY=${JISP_PYTHON:-python3}
DEV=${JISP_DEVICES_PER_PROCESS:-$(( 8 / N > 0 ? 8 / N : 1 ))}
PORT=${JISP_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

OTHER_XLA_FLAGS=$(sed -E 's/--xla_force_host_platform_device_count=[^ ]*//g' <<<"${XLA_FLAGS:-}")

declare -A index_of
pids=()
GRACE=${JISP_STOP_GRACE:-10}
stop_all() { for p in "${pids[@]}"; do kill "-${1:-TERM}" "$p" 2>/dev/null || true; done; }
any_alive() { [[ -n "$(jobs -rp)" ]]; }  # running children (exited ones are not)
# After a lost process: TERM the others, and KILL those still there after the grace.
stop_after_loss() {
  stop_all TERM
  local waited=0
  while any_alive && (( waited < GRACE * 10 )); do sleep 0.1; waited=$((waited + 1)); done
  any_alive && stop_all KILL
  wait
}
trap 'stop_all INT; wait; exit 130' INT
trap 'stop_all TERM; wait; exit 143' TERM

for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEV} ${OTHER_XLA_FLAGS}" \
  JAX_PLATFORMS=cpu \
  JISP_COORDINATOR="127.0.0.1:${PORT}" JISP_NUM_PROCESSES="$N" JISP_PROCESS_ID="$i" \
    "$PY" -m jisp train --config "$CONFIG" --workdir "$WORKDIR" "$@" &
  pids+=($!)
  index_of[$!]=$i
done

remaining=$N
while (( remaining > 0 )); do
  wait -n -p done_pid
  rc=$?
  remaining=$((remaining - 1))
  if (( rc != 0 )); then
    echo "local_multiprocess: process ${index_of[$done_pid]} (pid $done_pid) exited with status $rc; stopping the other processes" >&2
    stop_after_loss
    exit "$rc"
  fi
done
exit 0
