#!/usr/bin/env bash
# One SLURM task of launch/slurm.sbatch: `jisp train` with jax.distributed reading the
# allocation from SLURM's variables (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID,
# SLURM_LOCALID, SLURM_STEP_NODELIST): coordinator = the first node of the step.
#
#   launch/slurm_task.sh CONFIG WORKDIR [--config.a.b=value ...]
#
# Env: JISP_PYTHON (default python3); JISP_GPUS_PER_TASK (default 1): with one GPU per
# task the task sees only its own GPU (CUDA_VISIBLE_DEVICES = its local id) unless
# SLURM already restricted it.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.a.b=value ...]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
py=${JISP_PYTHON:-python3}
if [ "${JISP_GPUS_PER_TASK:-1}" = "1" ] && [ -z "${CUDA_VISIBLE_DEVICES:-}" ] \
    && [ -n "${SLURM_LOCALID:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
  export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID
fi
export JISP_DISTRIBUTED=auto
exec "$py" -m jisp train --config "$config" --workdir "$workdir" "$@"
