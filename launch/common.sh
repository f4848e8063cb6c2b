# shellcheck shell=bash
# Shared helpers for the launch/ scripts: flag parsing with env-var defaults, --help, --dry-run,
# safe quoting, and the gcloud pieces every script uses. Sourced, never run.
#
# A script declares its flags with `flag` / `switch`, then calls `parse_args "$@"`:
#   flag NAME VAR DEFAULT HELP    --NAME=VALUE or --NAME VALUE sets $VAR. The env var VAR, when set
#                                 and non-empty, replaces DEFAULT, and the command line wins over both.
#   switch NAME VAR HELP          --NAME sets $VAR=1 (env VAR=1 also works).
# Every command goes through `run_cmd` (or `run_bg`): with --dry-run it is printed, one per line,
# quoted so that the line can be pasted into a shell, and nothing is run.

set -euo pipefail

SCRIPT_NAME=$(basename "$0")
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
USAGE_HEAD=${USAGE_HEAD:-}
ALLOW_CONFIG_OVERRIDES=${ALLOW_CONFIG_OVERRIDES:-0}
EXTRA_ARGS=()
_FLAG_NAMES=()
_FLAG_VARS=()
_FLAG_KINDS=()
_FLAG_HELP=()

die() {
  echo "$SCRIPT_NAME: error: $*" >&2
  exit 2
}

note() {
  echo "$SCRIPT_NAME: $*" >&2
}

# q ARG: ARG quoted for a POSIX shell (bash, dash, sh). Plain words stay as they are; anything else
# is single-quoted, an embedded ' becoming '\''. (Unlike printf %q, whose $'..' form for control
# characters only bash reads, this is also safe for the remote login shell of `gcloud ... ssh`.)
q() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# quote_cmd ARG...: the command line, every argument quoted with q, on one line.
quote_cmd() {
  local out=() a
  for a in "$@"; do
    out+=("$(q "$a")")
  done
  local IFS=' '
  printf '%s' "${out[*]}"
}

flag() {
  _FLAG_NAMES+=("$1"); _FLAG_VARS+=("$2"); _FLAG_KINDS+=(value); _FLAG_HELP+=("$4")
  if [[ -z ${!2:-} ]]; then
    printf -v "$2" '%s' "$3"
  fi
}

switch() {
  _FLAG_NAMES+=("$1"); _FLAG_VARS+=("$2"); _FLAG_KINDS+=(switch); _FLAG_HELP+=("$3")
  if [[ -z ${!2:-} ]]; then
    printf -v "$2" '%s' 0
  fi
}

usage() {
  local i
  printf '%s\n\nFlags (each defaults to the environment variable named after it):\n' "$USAGE_HEAD"
  for i in "${!_FLAG_NAMES[@]}"; do
    if [[ ${_FLAG_KINDS[$i]} == switch ]]; then
      printf '  --%-22s %s [env %s=1]\n' "${_FLAG_NAMES[$i]}" "${_FLAG_HELP[$i]}" "${_FLAG_VARS[$i]}"
    else
      printf '  --%-22s %s [env %s]\n' "${_FLAG_NAMES[$i]}=VALUE" "${_FLAG_HELP[$i]}" \
        "${_FLAG_VARS[$i]}"
    fi
  done
  printf '  --%-22s %s\n' help 'Show this help and exit.'
}

_flag_index() {
  local i
  for i in "${!_FLAG_NAMES[@]}"; do
    if [[ ${_FLAG_NAMES[$i]} == "$1" ]]; then
      echo "$i"
      return 0
    fi
  done
  return 1
}

parse_args() {
  local arg name value i
  while (($#)); do
    arg=$1
    shift
    case $arg in
      -h | --help)
        usage
        exit 0
        ;;
      --)
        EXTRA_ARGS+=("$@")
        return 0
        ;;
      --config.*)
        ((ALLOW_CONFIG_OVERRIDES)) || die "unknown flag '$arg' (see --help)"
        EXTRA_ARGS+=("$arg")
        continue
        ;;
      --*) ;;
      *) die "unexpected argument '$arg' (see --help; extra arguments go after --)" ;;
    esac
    name=${arg#--}
    name=${name%%=*}
    i=$(_flag_index "$name") || die "unknown flag '--$name' (see --help)"
    if [[ ${_FLAG_KINDS[$i]} == switch ]]; then
      [[ $arg != *=* ]] || die "--$name takes no value"
      printf -v "${_FLAG_VARS[$i]}" '%s' 1
      continue
    fi
    if [[ $arg == *=* ]]; then
      value=${arg#*=}
    else
      (($#)) || die "--$name needs a value"
      value=$1
      shift
    fi
    printf -v "${_FLAG_VARS[$i]}" '%s' "$value"
  done
  # A switch set from the environment must be 0 or 1 (DRY_RUN=yes must not mean "run it").
  for i in "${!_FLAG_KINDS[@]}"; do
    if [[ ${_FLAG_KINDS[$i]} == switch && ! ${!_FLAG_VARS[$i]} =~ ^[01]$ ]]; then
      die "env ${_FLAG_VARS[$i]} must be 0 or 1 (got '${!_FLAG_VARS[$i]}')"
    fi
  done
}

# require VAR...: fails naming the flag and env var of every empty one.
require() {
  local var i missing=()
  for var in "$@"; do
    if [[ -z ${!var:-} ]]; then
      for i in "${!_FLAG_VARS[@]}"; do
        if [[ ${_FLAG_VARS[$i]} == "$var" ]]; then
          missing+=("--${_FLAG_NAMES[$i]} (or env $var)")
        fi
      done
    fi
  done
  if ((${#missing[@]})); then
    local IFS=','
    die "missing required setting(s):${missing[*]/#/ }"
  fi
}

# one_of VAR VALUE...: fails unless $VAR is one of the VALUEs.
one_of() {
  local var=$1 v
  shift
  for v in "$@"; do
    [[ ${!var} == "$v" ]] && return 0
  done
  local i name=$var
  for i in "${!_FLAG_VARS[@]}"; do
    [[ ${_FLAG_VARS[$i]} == "$var" ]] && name="--${_FLAG_NAMES[$i]}"
  done
  die "$name must be one of: $* (got '${!var}')"
}

# join_script STEP...: the shell steps joined with '; ' into one line.
join_script() {
  local out=$1
  shift
  local s
  for s in "$@"; do
    out+="; $s"
  done
  printf '%s' "$out"
}

# run_cmd ARG...: runs the command, or with --dry-run prints it and runs nothing.
run_cmd() {
  if ((DRY_RUN)); then
    quote_cmd "$@"
    echo
    return 0
  fi
  echo "+ $(quote_cmd "$@")" >&2
  "$@"
}

# exec_cmd ARG...: like run_cmd, but replaces this shell (signals such as SIGTERM reach the command).
exec_cmd() {
  if ((DRY_RUN)); then
    run_cmd "$@"
    return 0
  fi
  echo "+ $(quote_cmd "$@")" >&2
  exec "$@"
}

# run_bg LOG ARG...: starts the command in the background with stdout and stderr to LOG and appends
# its pid to BG_PIDS; with --dry-run prints `CMD >LOG 2>&1 &` and runs nothing.
BG_PIDS=()
run_bg() {
  local log=$1
  shift
  if ((DRY_RUN)); then
    echo "$(quote_cmd "$@") >$(q "$log") 2>&1 &"
    return 0
  fi
  echo "+ $(quote_cmd "$@") >$(q "$log") 2>&1 &" >&2
  "$@" >"$log" 2>&1 &
  BG_PIDS+=("$!")
}

# ----------------------------------------------------------------------------------- Cloud TPU
# Flags shared by the Cloud TPU scripts.
tpu_flags() {
  flag tpu TPU_NAME '' 'TPU VM (node) name.'
  flag zone ZONE '' 'Zone of the TPU, e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-b (v6e).'
  flag project PROJECT '' 'Google Cloud project (default: the gcloud config).'
  switch dry-run DRY_RUN 'Print every command, one per line, and run nothing.'
}

# gcloud_loc: --zone and, when set, --project, as the array GCLOUD_LOC.
gcloud_loc() {
  GCLOUD_LOC=("--zone=$ZONE")
  if [[ -n ${PROJECT:-} ]]; then
    GCLOUD_LOC+=("--project=$PROJECT")
  fi
}

# tpu_ssh WORKER SCRIPT: runs the shell SCRIPT on WORKER (a number or `all`) of the TPU VM.
tpu_ssh() {
  gcloud_loc
  run_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_LOC[@]}" "--worker=$1" \
    "--command=$2"
}

# default_runtime ACCELERATOR_TYPE: the TPU software version for its generation (see docs/launch.md
# for where each comes from; check them against the current Cloud TPU docs).
default_runtime() {
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *)
      die "no default runtime version for accelerator type '$1' (known: v4-*, v5litepod-*," \
        "v6e-*); pass --runtime-version (or env RUNTIME_VERSION)"
      ;;
  esac
}
