#!/usr/bin/env bash
# Run N jaxgpt training processes on this machine, wired together exactly like a multi-host job
# (JAX multi-controller runtime over a loopback coordinator). For testing multi-process code
# paths on one CPU box, or for one process per GPU group on a single multi-GPU host.
#
# Usage: launch/local.sh N [TRAIN ARGS...]
#   e.g. launch/local.sh 2 --config configs/tiny.py --workdir runs/mp
#
# Environment (all optional):
#   PYTHON              interpreter to run (default: python)
#   DEVICES_PER_PROCESS CPU mode: fake CPU devices per process (default 1)
#   GPUS_PER_PROCESS    GPU mode: give process i the GPUs [i*G, (i+1)*G) of CUDA_VISIBLE_DEVICES
#                       (or of 0,1,2,... when that is unset); CPU mode when unset
#   COORDINATOR_PORT    coordinator port on 127.0.0.1 (default: a free port)
#   LOG_DIR             where processes 1..N-1 write jaxgpt-proc-I.log (default /tmp)
#   KILL_AFTER_S        seconds between SIGTERM and SIGKILL when stopping processes (default 60)
#
# Process 0 prints to this terminal; the others write to their log files. If one process exits
# non-zero the others are stopped and this script exits with that code. Ctrl-C or SIGTERM is
# passed on to every process as SIGTERM, which makes jaxgpt write a checkpoint and exit; a second
# Ctrl-C kills them.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

die() {
  echo "local.sh: $*" >&2
  exit 2
}

if [ $# -lt 1 ]; then
  usage
  exit 2
fi
case "$1" in
  -h | --help)
    usage
    exit 0
    ;;
esac

N=$1
shift
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$N'"
PYTHON=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-/tmp}
KILL_AFTER_S=${KILL_AFTER_S:-60}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
GPUS_PER_PROCESS=${GPUS_PER_PROCESS:-}
[[ $KILL_AFTER_S =~ ^[0-9]+$ ]] || die "KILL_AFTER_S must be a number of seconds"
[[ $DEVICES_PER_PROCESS =~ ^[1-9][0-9]*$ ]] || die "DEVICES_PER_PROCESS must be a positive integer"
mkdir -p "$LOG_DIR"

if [ -n "${COORDINATOR_PORT:-}" ]; then
  PORT=$COORDINATOR_PORT
else
  # Bind port 0, read what the OS picked, release it. Another program could take it before
  # process 0 binds it; set COORDINATOR_PORT if that ever happens.
  PORT=$("$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')
fi
[[ $PORT =~ ^[0-9]+$ ]] || die "could not pick a coordinator port (got '$PORT')"
COORDINATOR=127.0.0.1:$PORT

GPU_LIST=()
if [ -n "$GPUS_PER_PROCESS" ]; then
  [[ $GPUS_PER_PROCESS =~ ^[1-9][0-9]*$ ]] || die "GPUS_PER_PROCESS must be a positive integer"
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -r -a GPU_LIST <<<"$CUDA_VISIBLE_DEVICES"
  else
    for ((g = 0; g < N * GPUS_PER_PROCESS; g++)); do GPU_LIST+=("$g"); done
  fi
  if [ "${#GPU_LIST[@]}" -lt $((N * GPUS_PER_PROCESS)) ]; then
    die "$N processes × $GPUS_PER_PROCESS GPUs need $((N * GPUS_PER_PROCESS)) GPUs;" \
      "CUDA_VISIBLE_DEVICES lists ${#GPU_LIST[@]}"
  fi
fi

# The environment of process $1, as NAME=VALUE words for env(1).
process_env() {
  local i=$1 first g gpus=""
  printf '%s\n' "JAXGPT_COORDINATOR=$COORDINATOR" "JAXGPT_NUM_PROCESSES=$N" "JAXGPT_PROCESS_ID=$i"
  if [ -n "$GPUS_PER_PROCESS" ]; then
    first=$((i * GPUS_PER_PROCESS))
    for ((g = first; g < first + GPUS_PER_PROCESS; g++)); do
      gpus="${gpus:+$gpus,}${GPU_LIST[$g]}"
    done
    printf '%s\n' "CUDA_VISIBLE_DEVICES=$gpus"
  else
    printf '%s\n' "JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}"
    printf '%s\n' "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
  fi
}

PIDS=()
ALIVE=()
STOP_SENT=0  # epoch seconds when SIGTERM went out to the processes (0 = not yet)
SIGNALLED=0  # 128 + signal number once we were interrupted

stop_all() {
  local i
  [ "${#PIDS[@]}" -gt 0 ] || return 0
  for i in "${!PIDS[@]}"; do
    if [ "${ALIVE[$i]}" = 1 ]; then kill "-$1" "${PIDS[$i]}" 2>/dev/null || true; fi
  done
}

# shellcheck disable=SC2317  # invoked from the traps below
on_signal() {
  if [ "$STOP_SENT" != 0 ]; then
    echo "local.sh: second interrupt: killing all processes" >&2
    stop_all KILL
    return
  fi
  SIGNALLED=$1
  echo "local.sh: passing SIGTERM to all $N processes (they checkpoint and exit)" >&2
  STOP_SENT=$(date +%s)
  stop_all TERM
}

trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'stop_all TERM' EXIT

if [ "$N" -gt 1 ]; then
  echo "local.sh: $N processes, coordinator $COORDINATOR; processes 1..$((N - 1)) log to" \
    "$LOG_DIR/jaxgpt-proc-I.log" >&2
fi
for ((i = 0; i < N; i++)); do
  ENV_WORDS=()
  while IFS= read -r word; do ENV_WORDS+=("$word"); done < <(process_env "$i")
  if [ "$i" = 0 ]; then
    env "${ENV_WORDS[@]}" "$PYTHON" -m jaxgpt.train "$@" &
  else
    env "${ENV_WORDS[@]}" "$PYTHON" -m jaxgpt.train "$@" >"$LOG_DIR/jaxgpt-proc-$i.log" 2>&1 &
  fi
  PIDS+=("$!")
  ALIVE+=(1)
done

# Poll instead of `wait -n` so this runs on bash 3.2 (macOS) too.
STATUS=0
RUNNING=$N
while [ "$RUNNING" -gt 0 ]; do
  for i in "${!PIDS[@]}"; do
    [ "${ALIVE[$i]}" = 1 ] || continue
    kill -0 "${PIDS[$i]}" 2>/dev/null && continue
    rc=0
    wait "${PIDS[$i]}" || rc=$?
    ALIVE[i]=0
    RUNNING=$((RUNNING - 1))
    if [ "$rc" != 0 ] && [ "$STATUS" = 0 ] && [ "$SIGNALLED" = 0 ]; then
      STATUS=$rc
      echo "local.sh: process $i exited with status $rc; stopping the others" >&2
      if [ "$i" != 0 ]; then
        echo "--- last lines of $LOG_DIR/jaxgpt-proc-$i.log ---" >&2
        tail -n 20 "$LOG_DIR/jaxgpt-proc-$i.log" >&2 || true
      fi
      STOP_SENT=$(date +%s)
      stop_all TERM
    fi
  done
  [ "$RUNNING" -gt 0 ] || break
  if [ "$STOP_SENT" != 0 ] && [ $(($(date +%s) - STOP_SENT)) -ge "$KILL_AFTER_S" ]; then
    echo "local.sh: processes still running ${KILL_AFTER_S}s after SIGTERM: killing them" >&2
    stop_all KILL
  fi
  sleep 0.2
done
trap - EXIT

if [ "$SIGNALLED" != 0 ]; then exit "$SIGNALLED"; fi
exit "$STATUS"
