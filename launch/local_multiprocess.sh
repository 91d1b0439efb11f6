#!/usr/bin/env bash
# Run `jisp train` as N processes on this host (127.0.0.1), splitting CPU devices
# among them: the multi-host code path without a cluster.
#
#   launch/local_multiprocess.sh N CONFIG WORKDIR [--config.a.b=value ...]
#
# Env: JISP_DEVICES_PER_PROCESS (default 8/N, at least 1), JISP_PORT (default: a free
# port), JISP_PYTHON (default: python3 on PATH). Exits non-zero if any process fails;
# a process that dies takes the others down (jax.distributed aborts on a lost peer).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 N CONFIG WORKDIR [--config.a.b=value ...]" >&2
  exit 2
fi
N=$1; CONFIG=$2; WORKDIR=$3; shift 3
PY=${JISP_PYTHON:-python3}
DEV=${JISP_DEVICES_PER_PROCESS:-$(( 8 / N > 0 ? 8 / N : 1 ))}
PORT=${JISP_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEV}" \
  JAX_PLATFORMS=cpu \
  JISP_COORDINATOR="127.0.0.1:${PORT}" JISP_NUM_PROCESSES="$N" JISP_PROCESS_ID="$i" \
    "$PY" -m jisp train --config "$CONFIG" --workdir "$WORKDIR" "$@" &
  pids+=($!)
done

rc=0
for p in "${pids[@]}"; do
  if ! wait "$p"; then rc=1; cleanup; fi
done
exit $rc
