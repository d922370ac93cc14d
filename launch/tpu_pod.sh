#!/usr/bin/env bash
# Train jaxgpt on a Cloud TPU VM slice: create the slice (or reuse it), put this code on every
# worker, install it, and run the same training command on all workers at once, output streamed
# here. JAX finds the coordinator and the process ids itself from the TPU VM metadata.
#
# Usage: launch/tpu_pod.sh [--dry-run] [--stop] [--] [TRAIN ARGS...]
#   WORKDIR=gs://my-bucket/runs/medium DATA_DIR=gs://my-bucket/data/medium ACCELERATOR=v5p-32 \
#     launch/tpu_pod.sh --config.mesh.fsdp=-1
#
#   --dry-run  print the gcloud commands instead of running them (gcloud is not needed)
#   --stop     send SIGTERM to the trainers on all workers; returns once they have checkpointed
#              and exited
#   TRAIN ARGS go to `python -m jaxgpt.train` after --config and --workdir.
#
# Settings are environment variables; the defaults are below. Rerunning the script with the same
# settings reuses the slice, refreshes the code and resumes training from the last checkpoint in
# WORKDIR. A preempted Spot slice is deleted and created again.
set -euo pipefail

NAME=${NAME:-jaxgpt}                 # TPU VM name (also the queued resource's name)
ZONE=${ZONE:-us-east5-a}             # must offer ACCELERATOR: gcloud compute tpus accelerator-types list
ACCELERATOR=${ACCELERATOR:-v5p-32}   # v5p-8/-32/-128, v5litepod-8/-32 (v5e), v4-32, v6e-16, ...
VERSION=${VERSION:-}                 # TPU software version; empty = the usual one for ACCELERATOR
PROJECT=${PROJECT:-}                 # empty = gcloud's configured project
SPOT=${SPOT:-0}                      # 1 = Spot capacity: cheaper, may be preempted at any time
QUEUED=${QUEUED:-0}                  # 1 = request through a queued resource (waits for capacity)
BEST_EFFORT=${BEST_EFFORT:-0}        # with QUEUED=1: the older best-effort tier (gcloud alpha)
CONFIG=${CONFIG:-configs/medium.py}  # config path inside the repository
WORKDIR=${WORKDIR:-}                 # required: gs://BUCKET/PATH, or a path every worker mounts
DATA_DIR=${DATA_DIR-jaxgpt-data}     # gs://BUCKET/PATH (prepared once, by worker 0) or a dir on every
                                     # worker (under ~, each prepares its copy); "" = WORKDIR/data
REPO_URL=${REPO_URL:-}               # git URL the workers clone; empty = copy this checkout
GIT_REF=${GIT_REF:-}                 # branch or tag to clone; empty = the default branch
REMOTE_DIR=${REMOTE_DIR:-jaxgpt}     # code dir on the workers (under ~; replaced on every run)
VENV=${VENV:-jaxgpt-venv}            # virtualenv on the workers (under ~)
PYTHON_VERSION=${PYTHON_VERSION:-3.11}  # installed with uv when the image's python3 is older
DETACH=${DETACH:-0}                  # 1 = start training under nohup (log: ~/jaxgpt-train.log), return
DELETE=${DELETE:-0}                  # 1 = delete the slice (or queued resource) at the end
POLL_S=${POLL_S:-30}                 # seconds between state checks while waiting for capacity

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRY_RUN=0
STOP=0

usage() {
  sed -n '2,/^POLL_S=/p' "$0" | grep -v '^set -euo' | sed 's/^# \{0,1\}//'
}
log() { echo "tpu_pod.sh: $*" >&2; }
die() {
  log "$*"
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --stop) STOP=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      break
      ;;
    *) break ;;
  esac
  shift
done
TRAIN_ARGS=("$@")

if [ -z "$VERSION" ]; then
  case "$ACCELERATOR" in
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5e-*) die "gcloud names v5e slices v5litepod-N: use ACCELERATOR=v5litepod-${ACCELERATOR#v5e-}" ;;
    v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
    *) die "no default TPU software version for ACCELERATOR=$ACCELERATOR: set VERSION" ;;
  esac
fi
[ "$STOP" = 1 ] || [ -n "$WORKDIR" ] ||
  die "set WORKDIR=gs://BUCKET/PATH (or a path every worker mounts)"
for dir in "$WORKDIR" "$DATA_DIR"; do
  case "$dir" in
    gs://* | s3://* | "") ;;
    *:/*) die "$dir: only gs://BUCKET/PATH and s3://BUCKET/PATH are bucket locations" ;;
  esac
done
if [ "$DETACH" = 1 ] && [ "$DELETE" = 1 ]; then die "DETACH=1 and DELETE=1 do not go together"; fi
if [ "$DRY_RUN" != 1 ] && ! command -v gcloud >/dev/null; then
  die "gcloud not found: install the Google Cloud CLI (or use --dry-run)"
fi

GC_FLAGS=(--zone="$ZONE")
if [ -n "$PROJECT" ]; then GC_FLAGS+=(--project="$PROJECT"); fi

# One argument, quoted for a POSIX shell only where needed (for printing commands).
quote() {
  case "$1" in
    "" | *[!A-Za-z0-9_./:=@,+%-]*) printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
    *) printf '%s' "$1" ;;
  esac
}

# Print a command; run it unless this is a dry run.
run() {
  local a line=""
  for a in "$@"; do line="$line $(quote "$a")"; done
  if [ "$DRY_RUN" = 1 ]; then
    echo "${line# }"
  else
    echo "+${line}" >&2
    "$@"
  fi
}

tpu_vm() { run gcloud compute tpus tpu-vm "$@" "${GC_FLAGS[@]}"; }
queued() { run gcloud compute tpus queued-resources "$@" "${GC_FLAGS[@]}"; }
on_all_workers() { tpu_vm ssh "$NAME" --worker=all --command="$1"; }

# Paths on the workers: relative ones are under the remote home directory.
# shellcheck disable=SC2016  # "$HOME" is for the remote shell to expand
remote_path() {
  case "$1" in
    /* | gs://* | s3://*) printf '%q' "$1" ;;
    *) printf '"$HOME"/%q' "$1" ;;
  esac
}
R_DIR=$(remote_path "$REMOTE_DIR")
R_VENV=$(remote_path "$VENV")
R_PY="$R_VENV/bin/python"
# SIGTERM to the trainers, then wait (up to 10 min) until they have written the checkpoint and
# exited. The [j] keeps the pattern from matching this command's own shell.
STOP_CMD="pkill -TERM -f '[j]axgpt[.]train' || true
for i in \$(seq 120); do pgrep -f '[j]axgpt[.]train' >/dev/null || exit 0; sleep 5; done
echo 'trainers still running 10 minutes after SIGTERM' >&2; exit 1"

if [ "$STOP" = 1 ]; then
  on_all_workers "$STOP_CMD"
  exit 0
fi

# --- the slice ------------------------------------------------------------------------------------
node_state() {
  gcloud compute tpus tpu-vm describe "$NAME" "${GC_FLAGS[@]}" --format='value(state)' \
    2>/dev/null || true
}
queued_state() {
  gcloud compute tpus queued-resources describe "$NAME" "${GC_FLAGS[@]}" \
    --format='value(state.state)' 2>/dev/null || true
}

# wait_for STATE_FUNCTION WANTED [FAILED_STATES...]
wait_for() {
  local fn=$1 want=$2 state last="-"
  shift 2
  while :; do
    state=$("$fn")
    if [ "$state" = "$want" ]; then return 0; fi
    case " $* " in *" $state "*) die "$NAME is $state" ;; esac
    if [ "$state" != "$last" ]; then
      log "$NAME is ${state:-not there yet}; waiting for $want (every ${POLL_S}s)"
      last=$state
    fi
    sleep "$POLL_S"
  done
}

create_node() {
  local spot=()
  if [ "$SPOT" = 1 ]; then spot=(--spot); fi
  tpu_vm create "$NAME" --accelerator-type="$ACCELERATOR" --version="$VERSION" \
    ${spot[@]+"${spot[@]}"}
}

create_queued() {
  local args=(create "$NAME" --node-id="$NAME" --accelerator-type="$ACCELERATOR"
    --runtime-version="$VERSION")
  if [ "$BEST_EFFORT" = 1 ]; then
    run gcloud alpha compute tpus queued-resources "${args[@]}" --best-effort "${GC_FLAGS[@]}"
  elif [ "$SPOT" = 1 ]; then
    queued "${args[@]}" --spot
  else
    queued "${args[@]}"
  fi
}

ensure_node() {
  local state
  if [ "$DRY_RUN" = 1 ]; then
    echo "# unless TPU VM $NAME is already READY (a PREEMPTED one is deleted first):"
    create_node
    return
  fi
  state=$(node_state)
  case "$state" in
    READY)
      log "reusing TPU VM $NAME"
      return
      ;;
    "") ;;
    PREEMPTED | TERMINATED)
      log "TPU VM $NAME is $state: deleting it and creating it again"
      tpu_vm delete "$NAME" --quiet
      ;;
    STOPPED)
      tpu_vm start "$NAME"
      return
      ;;
    *)
      wait_for node_state READY PREEMPTED TERMINATED
      return
      ;;
  esac
  create_node
}

ensure_queued() {
  local state
  if [ "$DRY_RUN" = 1 ]; then
    echo "# unless queued resource $NAME exists (a SUSPENDED or FAILED one is deleted first):"
    create_queued
    echo "# then wait until: gcloud compute tpus queued-resources describe $NAME" \
      "--format='value(state.state)' says ACTIVE"
    return
  fi
  state=$(queued_state)
  case "$state" in
    ACTIVE)
      log "reusing queued resource $NAME"
      return
      ;;
    "") create_queued ;;
    SUSPENDED | FAILED)
      log "queued resource $NAME is $state: deleting it and requesting it again"
      queued delete "$NAME" --force --quiet
      create_queued
      ;;
  esac
  wait_for queued_state ACTIVE FAILED SUSPENDED
}

# --- code and environment on the workers ---------------------------------------------------------
TARBALL=""
copy_code() {
  if [ -n "$REPO_URL" ]; then
    on_all_workers "rm -rf $R_DIR && git clone --depth 1${GIT_REF:+ --branch $(printf '%q' "$GIT_REF")} $(printf '%q' "$REPO_URL") $R_DIR"
    return
  fi
  if [ "$DRY_RUN" != 1 ] && ! git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    die "$ROOT is not a git checkout: set REPO_URL to a repository the workers can clone"
  fi
  TARBALL="${TMPDIR:-/tmp}/jaxgpt-src-$$.tgz"
  if [ "$DRY_RUN" = 1 ]; then
    echo "# pack this checkout's files (tracked, plus untracked ones git does not ignore):"
    echo "cd $(quote "$ROOT") && git ls-files -co --exclude-standard | tar -czf $(quote "$TARBALL") -T -"
  else
    log "packing $ROOT"
    (cd "$ROOT" && git ls-files -z -co --exclude-standard |
      while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
      tar --null -czf "$TARBALL" -T -)
  fi
  tpu_vm scp "$TARBALL" "$NAME:jaxgpt-src.tgz" --worker=all
  on_all_workers "rm -rf $R_DIR && mkdir -p $R_DIR && tar -xzf jaxgpt-src.tgz -C $R_DIR && rm jaxgpt-src.tgz"
}

install() {
  # TPU images ship Ubuntu's python3 (3.10 on 22.04); jaxgpt needs 3.11+, which uv provides.
  on_all_workers "set -e
cd $R_DIR
if [ ! -x $R_PY ]; then
  if python3 -c \"import sys; sys.exit(sys.version_info < (3, 11))\" && python3 -m venv $R_VENV; then :
  else
    python3 -m pip install --user --quiet uv
    rm -rf $R_VENV
    \"\$HOME\"/.local/bin/uv venv --seed --python $(printf '%q' "$PYTHON_VERSION") $R_VENV
  fi
fi
$R_PY -m pip install --quiet --upgrade pip
$R_PY -m pip install --quiet -e \".[tpu,cloud]\""
}

# --- training ---------------------------------------------------------------------------------------
train_command() {
  local cmd a
  cmd="$R_PY -m jaxgpt.train --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")"
  if [ -n "$DATA_DIR" ]; then cmd="$cmd --config.data.path=$(remote_path "$DATA_DIR")"; fi
  for a in ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}; do cmd="$cmd $(printf '%q' "$a")"; done
  echo "$cmd"
}

prepare() {
  # A bucket data dir is prepared once, by worker 0, and every worker reads its share from it. A
  # local one is built by every worker (the build is deterministic and skipped when up to date).
  local cmd a
  cmd="$R_PY -m jaxgpt.prepare --config $(printf '%q' "$CONFIG") --config.data.path=$(remote_path "$DATA_DIR")"
  for a in ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}; do
    case "$a" in --config.*) cmd="$cmd $(printf '%q' "$a")" ;; esac
  done
  case "$DATA_DIR" in
    gs://* | s3://*) tpu_vm ssh "$NAME" --worker=0 --command="cd $R_DIR && $cmd" ;;
    *) on_all_workers "cd $R_DIR && $cmd" ;;
  esac
}

stop_trainers() {
  trap - INT TERM
  log "stopping the trainers on all workers (SIGTERM: they checkpoint and exit)"
  on_all_workers "$STOP_CMD" || true
  exit "$1"
}

train() {
  if [ "$DETACH" = 1 ]; then
    on_all_workers "cd $R_DIR && nohup $(train_command) >\"\$HOME\"/jaxgpt-train.log 2>&1 </dev/null &"
    log "training started in the background; follow it with:"
    log "  gcloud compute tpus tpu-vm ssh $NAME --zone=$ZONE --worker=0 --command='tail -f ~/jaxgpt-train.log'"
    log "stop it (with a checkpoint) with: launch/tpu_pod.sh --stop"
    return
  fi
  trap 'stop_trainers 130' INT
  trap 'stop_trainers 143' TERM
  on_all_workers "cd $R_DIR && exec $(train_command)"
  trap - INT TERM
}

TPU_UP=0
finish() {
  local rc=$?
  if [ -n "$TARBALL" ] && [ "$DRY_RUN" != 1 ]; then rm -f "$TARBALL"; fi
  if [ "$DELETE" = 1 ] && [ "$TPU_UP" = 1 ]; then
    if [ "$QUEUED" = 1 ]; then
      queued delete "$NAME" --force --quiet || log "could not delete queued resource $NAME"
    else
      tpu_vm delete "$NAME" --quiet || log "could not delete TPU VM $NAME"
    fi
  fi
  exit "$rc"
}
trap finish EXIT

log "$NAME: $ACCELERATOR ($VERSION) in $ZONE${PROJECT:+, project $PROJECT}; config $CONFIG," \
  "workdir $WORKDIR"
if [ "$QUEUED" = 1 ]; then ensure_queued; else ensure_node; fi
TPU_UP=1
copy_code
install
if [ -n "$DATA_DIR" ]; then prepare; fi
train
