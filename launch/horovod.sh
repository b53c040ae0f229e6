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
exec horovodrun -np "$np" "${extra[@]}" "$controller" "${cmd[@]}"
