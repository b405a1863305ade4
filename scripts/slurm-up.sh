#!/usr/bin/env bash
# Start a single-node Slurm on this machine for the test suite and the local profiles:
# munged, a private MariaDB + slurmdbd (so sacct reports CANCELLED/TIMEOUT), slurmctld, slurmd.
# Must run as root (Debian/Ubuntu, no systemd needed). Safe to re-run: what is up stays up;
# a changed slurm.conf restarts the Slurm daemons. Any failure exits non-zero with a message.
#   NODE_CPUS   CPUs the node advertises (default 8; may exceed nproc so that a 2-task job
#               and a concurrent job fit on a 2-core CI machine)
#   PARTITION   partition name (default debug, as in jobs/clusters/local.yaml)
#   CLUSTER     cluster name (default localci)
#   DB_PORT     private MariaDB port (default 3307, away from a distro-managed 3306)
# cred_expire=10: a requeued job may start again after ~11 s instead of Slurm's default 121 s,
# which keeps the time-limit/requeue test short; a production cluster keeps its own setting.
set -euo pipefail

NODE_CPUS=${NODE_CPUS:-8}
PARTITION=${PARTITION:-debug}
CLUSTER=${CLUSTER:-localci}
DB_PORT=${DB_PORT:-3307}

PIDDIR=/var/spool/slurm/run
DBDIR=/var/lib/slurm/mariadb
LOGDIR=/var/log/slurm
SLURM_CONF_FILE=/etc/slurm/slurm.conf
DBD_CONF_FILE=/etc/slurm/slurmdbd.conf

say() { printf '[slurm-up %s] %s\n' "$(date +%T)" "$*"; }
die() { printf '[slurm-up] FAILED: %s\n' "$*" >&2; for f in "$LOGDIR"/*.log; do
          [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }; done; exit 1; }
trap 'die "command failed at line $LINENO"' ERR

# running PIDFILE: the pid in the file names a live, non-zombie process
running() { local pid st; pid=$(cat "$1" 2>/dev/null) || return 1; [ -n "$pid" ] || return 1
            st=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1; [ -n "$st" ] && [[ $st != Z* ]]; }
# retry SECONDS CMD...: poll CMD every 0.2 s until it succeeds
retry() { local limit=$(( $1 * 5 )) n; shift
          for ((n = 0; n < limit; n++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
          die "gave up waiting for: $*"; }
stop() { running "$1" || return 0; local pid n; pid=$(cat "$1"); kill -TERM "$pid"
         for ((n = 0; n < 150; n++)); do running "$1" || return 0; sleep 0.2; done
         die "pid $pid ($1) did not stop"; }

[ "$(id -u)" = 0 ] || die "run as root (the daemons and the job users need it)"

# 1. packages: install only what is missing (a fresh CI machine has none of them)
need=()
for pkg in procps munge slurmctld slurmd slurm-client slurmdbd mariadb-server; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
restart=0
if ((${#need[@]})); then
  say "installing ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  restart=1
fi

# 2. munge authentication
if [ ! -s /etc/munge/munge.key ]; then
  install -d -o munge -g munge -m 0700 /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  retry 10 sh -c 'munge -n | unmunge'
fi

# 3. slurm.conf
install -d -o slurm -g slurm -m 0755 /var/spool/slurm "$PIDDIR" /var/lib/slurm/slurmctld "$LOGDIR"
install -d -m 0755 /var/lib/slurm/slurmd
mem_mb=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mem_mb=$(( mem_mb * 9 / 10 ))
conf=$(cat <<CONF
# written by matra-hpc scripts/slurm-up.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=300
SlurmctldPidFile=$PIDDIR/slurmctld.pid
SlurmdPidFile=$PIDDIR/slurmd.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
)
if [ "$(cat "$SLURM_CONF_FILE" 2>/dev/null)" != "$conf" ]; then
  printf '%s\n' "$conf" > "$SLURM_CONF_FILE.new"; chmod 0644 "$SLURM_CONF_FILE.new"
  mv "$SLURM_CONF_FILE.new" "$SLURM_CONF_FILE"; restart=1; say "wrote $SLURM_CONF_FILE"
fi

# 4. accounting: a private MariaDB instance and slurmdbd
if [ ! -d "$DBDIR/mysql" ]; then
  say "creating MariaDB datadir $DBDIR"
  install -d -o mysql -g mysql -m 0750 "$DBDIR"
  mariadb-install-db --no-defaults --user=mysql --datadir="$DBDIR" \
    --auth-root-authentication-method=socket --skip-test-db >"$LOGDIR/mariadb-install.log" 2>&1
fi
db_ping=(mariadb-admin --no-defaults --socket="$DBDIR/mysqld.sock" ping)
if ! "${db_ping[@]}" >/dev/null 2>&1; then
  say "starting mariadbd on 127.0.0.1:$DB_PORT"
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DBDIR" \
    --socket="$DBDIR/mysqld.sock" --pid-file="$DBDIR/mariadbd.pid" --log-error="$LOGDIR/mariadbd.log" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --innodb-buffer-pool-size=256M \
    --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
  retry 60 "${db_ping[@]}"
fi
mariadb --no-defaults --socket="$DBDIR/mysqld.sock" -u root -e "
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
dbd=$(cat <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=$PIDDIR/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
)
if [ "$(cat "$DBD_CONF_FILE" 2>/dev/null)" != "$dbd" ]; then
  printf '%s\n' "$dbd" > "$DBD_CONF_FILE"; restart=1; say "wrote $DBD_CONF_FILE"
fi
chown slurm:slurm "$DBD_CONF_FILE"; chmod 0600 "$DBD_CONF_FILE"   # slurmdbd refuses a world-readable conf
if [ "$restart" = 1 ]; then stop "$PIDDIR/slurmdbd.pid"; fi
if ! running "$PIDDIR/slurmdbd.pid"; then
  say "starting slurmdbd"; slurmdbd
  retry 60 sacctmgr -n show cluster
fi

# 5. controller and node daemon
if [ "$restart" = 1 ]; then stop "$PIDDIR/slurmd.pid"; stop "$PIDDIR/slurmctld.pid"; fi
if ! running "$PIDDIR/slurmctld.pid"; then say "starting slurmctld"; slurmctld; fi
retry 30 sh -c 'scontrol ping | grep -q UP'
if ! running "$PIDDIR/slurmd.pid"; then say "starting slurmd"; slurmd; fi
node_usable() { sinfo -h -n localhost -o %t | grep -Eq '^(idle|mix|alloc|comp)'; }
n=0
until node_usable; do
  n=$((n + 1))
  # a node left DOWN/DRAIN by an earlier run (e.g. after a restart) is put back to work once
  [ "$n" = 25 ] && scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  [ "$n" -ge 150 ] && die "node not usable: $(sinfo -h -n localhost -o '%t %E')"
  sleep 0.2
done
retry 30 sh -c "sacctmgr -n -P show cluster format=cluster | grep -qx '$CLUSTER'"

# 6. one real job proves the whole chain
out=$(srun -N1 -n1 -t 1 -p "$PARTITION" hostname) || die "srun smoke job failed"
say "up: partition $PARTITION, $NODE_CPUS CPUs, smoke job ran on $out"
