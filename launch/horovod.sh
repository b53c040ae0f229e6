#!/usr/bin/env bash
# Run imgtrain under horovodrun on one host or many.
#
#   launch/horovod.sh -np 2 -- imgtrain train --config cfg.yaml
#   launch/horovod.sh -np 8 -H node0:4,node1:4 -- imgtrain train --config cfg.yaml
#   launch/horovod.sh -np 8 --hostfile hosts.txt --mpi -- imgtrain train --config cfg.yaml
#
# Options before -- go to horovodrun (-np, -H, --hostfile, -p/--ssh-port, ...);
# without -H or --hostfile the processes run on this host. The controller is
# gloo unless --mpi is given. The command after -- runs once per process with
# --strategy horovod added to `imgtrain train`.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
np=""; hosts=""; controller="--gloo"; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    -np|--num-proc) np="$2"; shift 2 ;;
    -H|--hosts) hosts="$2"; extra+=(-H "$2"); shift 2 ;;
    --hostfile|-hostfile) hosts="file"; extra+=(--hostfile "$2"); shift 2 ;;
    --mpi) controller="--mpi"; shift ;;
    --gloo) controller="--gloo"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
[ -n "$np" ] || { echo "launch/horovod.sh: error: give -np N; see --help" >&2; exit 2; }
[ $# -gt 0 ] || { echo "launch/horovod.sh: error: put the command after --; see --help" >&2; exit 2; }
[ -n "$hosts" ] || extra+=(-H "localhost:${np}")
command -v horovodrun >/dev/null || { echo "launch/horovod.sh: error: horovodrun not found; run launch/install_horovod.sh (make install does)" >&2; exit 2; }

cmd=("$@")
if [ "${cmd[0]}" = imgtrain ] && ! command -v imgtrain >/dev/null; then
  cmd=(python3 -m imgtrain "${cmd[@]:1}")
fi
if printf '%s\n' "${cmd[@]}" | grep -qx train && ! printf '%s\n' "${cmd[@]}" | grep -q -- '--strategy'; then
  cmd+=(--strategy horovod)
fi
# horovodrun's own Python runs launch/horovod_run.py: horovodrun, with a stopped or failed
# worker said in one line rather than a traceback.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=$(sed -n '1s/^#!//p' "$(command -v horovodrun)")
run=("${python:-python3}" "$here/horovod_run.py" -np "$np" "${extra[@]}" "$controller" "${cmd[@]}")
command -v setsid >/dev/null || exec "${run[@]}"

# A terminal's Ctrl-C (SIGINT to this script's whole process group), `kill -- -PGID` and
# `tini -g` would reach horovodrun too, which answers by sending every worker SIGTERM and
# killing it 5 s later. So horovodrun runs in a session of its own, and this script passes
# SIGINT or SIGTERM on to each worker once (the same signal again within a second is the same
# request); the workers stop together at one step with a checkpoint, and the script exits
# 128 + the signal. A signal ignored at the start (nohup) stays ignored.
setsid -w "${run[@]}" &
hvd=$!
told=""; told_at=0

workers() {  # the imgtrain processes under horovodrun: Horovod's rank in their environment
  local pids="$hvd" all=""
  while [ -n "$pids" ]; do
    all="$all $pids"
    pids=$(for p in $pids; do cat /proc/"$p"/task/*/children 2>/dev/null || true; done)
  done
  for p in $all; do
    case "$(cat "/proc/$p/comm" 2>/dev/null)" in sh|dash|bash|setsid|"") continue ;; esac
    tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -q '^HOROVOD_RANK=' && echo "$p"
  done
  return 0
}

forward() {
  local now; now=$(date +%s%N)
  if [ "$1" = "$told" ] && [ $(( (now - told_at) / 1000000 )) -lt 1000 ]; then return; fi
  [ -n "$told" ] || told=$1
  told_at=$now
  for p in $(workers); do kill -s "$1" "$p" 2>/dev/null || true; done
}
trap 'forward INT' INT
trap 'forward TERM' TERM

while :; do
  set +e; wait "$hvd"; code=$?; set -e
  kill -0 "$hvd" 2>/dev/null || break  # else a trapped signal ended the wait: wait on
done
if [ "$code" -ne 0 ] && [ -n "$told" ]; then exit $((128 + $(kill -l "$told"))); fi
exit "$code"
