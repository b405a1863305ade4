#!/usr/bin/env bash
# Stop what scripts/slurm-up.sh started, by pid file; jobs still queued are cancelled first.
set -uo pipefail
PIDDIR=/var/spool/slurm/run
DBDIR=/var/lib/slurm/mariadb

running() { local pid st; pid=$(cat "$1" 2>/dev/null) || return 1; [ -n "$pid" ] || return 1
            st=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1; [ -n "$st" ] && [[ $st != Z* ]]; }
stop() {  # stop NAME PIDFILE
  local pid n; running "$2" || { echo "$1: not running"; return 0; }
  pid=$(cat "$2"); kill -TERM "$pid"
  for ((n = 0; n < 150; n++)); do running "$2" || { echo "$1: stopped"; return 0; }; sleep 0.2; done
  echo "$1: pid $pid still running after 30 s" >&2; return 1
}

if running "$PIDDIR/slurmctld.pid" && scontrol ping 2>/dev/null | grep -q UP; then
  queued=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$queued" ]; then
    # shellcheck disable=SC2086
    scancel $queued
    for ((n = 0; n < 75; n++)); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
status=0
stop slurmd "$PIDDIR/slurmd.pid" || status=1
stop slurmctld "$PIDDIR/slurmctld.pid" || status=1
stop slurmdbd "$PIDDIR/slurmdbd.pid" || status=1
stop mariadbd "$DBDIR/mariadbd.pid" || status=1
stop munged /run/munge/munged.pid || status=1
exit $status
