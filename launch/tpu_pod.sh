#!/usr/bin/env bash
# Run the same `jisp train` on every worker of an existing Cloud TPU VM slice.
#
#   launch/tpu_pod.sh [--dry-run] --tpu NAME --zone ZONE [--project P] [--repo DIR] \
#       CONFIG WORKDIR [--config.a.b=value ...]
#
# Each worker runs `python3 -m jisp train` from DIR (default $HOME/jisp, a checkout or an
# installed jisp on every worker) with JISP_DISTRIBUTED=auto: jax.distributed detects the
# slice (process count, ids, coordinator) by itself. WORKDIR must be on storage every
# worker sees (e.g. a Filestore / NFS mount): checkpoints, metrics and the lock live there.
# --dry-run prints the gcloud command instead of running it. Preemption of a spot/queued
# slice sends SIGTERM: every process saves the same step and exits 0; run this again on
# the new slice to resume.
set -euo pipefail
usage() {
  echo "usage: $0 [--dry-run] --tpu NAME --zone ZONE [--project P] [--repo DIR] CONFIG WORKDIR [--config.a.b=v ...]" >&2
  exit 2
}
dry=0; tpu=""; zone=""; project=""
# $HOME is expanded on each worker, not here.
# shellcheck disable=SC2016
repo='$HOME/jisp'
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --tpu) tpu=${2:-}; shift 2 ;;
    --zone) zone=${2:-}; shift 2 ;;
    --project) project=${2:-}; shift 2 ;;
    --repo) repo=${2:-}; shift 2 ;;
    --help|-h) usage ;;
    --*) echo "tpu_pod.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ -n "$tpu" ] && [ -n "$zone" ] && [ $# -ge 2 ] || usage
config=$1; workdir=$2; shift 2

remote="cd $repo && JISP_DISTRIBUTED=auto python3 -m jisp train --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir")"
for a in "$@"; do
  remote+=" $(printf '%q' "$a")"
done
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote")
if [ -n "$project" ]; then
  cmd+=(--project "$project")
fi
if (( dry )); then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
