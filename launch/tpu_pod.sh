#!/usr/bin/env bash
# Run `lumina-jax train ARGS...` on one worker of a multi-host TPU VM pod. Start it on
# every worker at once (all workers run the same command; JAX forms one job of them):
#
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command='
#     cd ~/lumina-jax && INSTALL=1 LOG_DIR=$HOME/logs bash launch/tpu_pod.sh \
#       --config configs/lumina_video_2b.py --workdir /mnt/shared/runs/2b \
#       --config.data_dir=/mnt/shared/data --config.mesh.fsdp=-1'
#
# Put the repository on every worker first (same path everywhere), e.g.
#   gcloud compute tpus tpu-vm scp --recurse . "$TPU_NAME":~/lumina-jax --zone="$ZONE" --worker=all
# The workdir and data_dir must be the same shared storage on every worker (a GCS FUSE or
# Filestore/NFS mount); the checkpoints there are how a restarted job resumes.
#
#   launch/tpu_pod.sh [lumina-jax train arguments...]
#
# Variables (all optional):
#   LUMINA_DIR   repository checkout on the worker (default: this script's parent folder)
#   VENV         virtualenv to use (default: $LUMINA_DIR/.venv)
#   INSTALL      1 = create VENV if missing and `pip install -e ".[tpu]"` into it first
#   LOG_DIR      if set, also append this worker's output to $LOG_DIR/worker_<id>.log
#   TPU_WORKER_HOSTNAMES, TPU_WORKER_ID
#                the pod's workers and this worker's index; read from the TPU VM metadata
#                server when unset, so lumina_jax.parallel.distributed.maybe_initialize
#                sees a multi-host pod and jax.distributed.initialize detects the rest.
#   JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
#                explicit multi-host settings; when set they win over detection.
# Multi-slice jobs (queued resources) set MEGASCALE_* themselves; JAX reads them.
set -euo pipefail

lumina_dir=${LUMINA_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
venv=${VENV:-$lumina_dir/.venv}
cd "$lumina_dir"

if [ "${INSTALL:-0}" = 1 ]; then
  [ -d "$venv" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q -e ".[tpu]"
fi
if [ -f "$venv/bin/activate" ]; then
  # shellcheck disable=SC1091  # the venv exists only at run time
  . "$venv/bin/activate"
fi

metadata() {
  curl -sf -H "Metadata-Flavor: Google" \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}
# TPU VMs created with `gcloud compute tpus tpu-vm create` publish the worker list in the
# metadata server, not always in the environment; export it so every layer agrees.
if [ -z "${JAX_COORDINATOR_ADDRESS:-}" ] && [ -z "${TPU_WORKER_HOSTNAMES:-}" ]; then
  if endpoints=$(metadata worker-network-endpoints 2>/dev/null); then
    # Entries are "host" or "name:id:ip"; the last field is the address either way.
    TPU_WORKER_HOSTNAMES=$(tr ',' '\n' <<<"$endpoints" | awk -F: '{print $NF}' | paste -sd, -)
    TPU_WORKER_ID=$(metadata agent-worker-number)
    export TPU_WORKER_HOSTNAMES TPU_WORKER_ID
  fi
fi

worker=${TPU_WORKER_ID:-${JAX_PROCESS_ID:-0}}
echo "tpu_pod.sh: worker $worker of ${TPU_WORKER_HOSTNAMES:-${JAX_NUM_PROCESSES:-1 host}} on $(hostname)" >&2
if [ -n "${LOG_DIR:-}" ]; then
  mkdir -p "$LOG_DIR"
  exec > >(tee -a "$LOG_DIR/worker_$worker.log") 2>&1
fi
# exec: the trainer itself receives SIGTERM on preemption and saves a checkpoint.
exec lumina-jax train "$@"
