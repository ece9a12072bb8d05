#!/usr/bin/env bash
# Run N local processes that form one JAX job over 127.0.0.1 (gloo collectives on CPU).
#
#   launch/local.sh N COMMAND [ARGS...]
#
# Each process gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, which
# lumina_jax.parallel.distributed.maybe_initialize reads. Variables:
#   PORT         coordinator port (default: a free one picked by Python)
#   LOG_DIR      if set, process i writes its output to $LOG_DIR/process_i.log
# The script waits for all processes and exits non-zero if any of them failed.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NUM_PROCESSES COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1; shift
port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < n; i++)); do
  if [ -n "${LOG_DIR:-}" ]; then
    mkdir -p "$LOG_DIR"
    JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
      "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  else
    JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" "$@" &
  fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
