#!/usr/bin/env bash
# Start a real single-node Slurm cluster (munged + slurmctld + slurmd) on this machine, for tests/test_slurm.py
# and CI. Needs root (daemons, apt). Idempotent: a second run finds the daemons answering and does nothing.
#
#   scripts/ci_start_slurm.sh            # install if missing, configure, start; prints the SLURM_CONF to export
#   scripts/ci_start_slurm.sh --stop     # stop the daemons this script started (by their pid files)
#
# Environment:
#   SLURM_CI_DIR   config, state, logs and pid files (default /var/tmp/efficientnet_slurm); the config is
#                  written there, not to /etc/slurm, so a machine's own Slurm setup is never overwritten.
#   SLURM_CI_NO_INSTALL=1  fail instead of apt-get installing slurm-wlm + munge when they are missing.
#
# The cluster: one node named by `hostname -s` with all its CPUs, one partition "ci", no accounting, and the
# plugins that work inside a container without systemd or cgroup delegation (proctrack/linuxproc, task/none).
set -Eeuo pipefail

DIR=${SLURM_CI_DIR:-/var/tmp/efficientnet_slurm}
CONF="$DIR/slurm.conf"
NODE=$(hostname -s)
CPUS=$(nproc)

log() { echo "ci_start_slurm.sh: $*"; }
die() { echo "ci_start_slurm.sh: ERROR: $*" >&2; exit 1; }

stop_daemons() {
  # Only the daemons this script started: their pid files live in $DIR (never pkill by name).
  local f pid
  for f in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
    pid=$(cat "$f" 2>/dev/null || true)   # read once: a daemon removes its own pid file as it exits
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      # Wait for it to exit so a restart right after does not find its port still taken.
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      log "stopped $(basename "$f" .pid) (pid $pid)"
    fi
    rm -f "$f"
  done
}

if [ "${1:-}" = --stop ]; then
  stop_daemons
  exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts munged, slurmctld and slurmd)"
start=$(date +%s)

# --- 1. Packages --------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  [ "${SLURM_CI_NO_INSTALL:-0}" != 1 ] || die "slurm-wlm/munge are not installed and SLURM_CI_NO_INSTALL=1"
  command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and there is no apt-get to install them"
  log "apt-get installing slurm-wlm munge"
  t0=$(date +%s)
  apt-get update -qq || die "apt-get update failed"
  # The package scripts try to start services; without systemd that fails harmlessly, and policy-rc.d 101
  # makes invoke-rc.d skip it outright so the install does not leave half-started daemons behind.
  policy_created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_created=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
    || { [ $policy_created = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install slurm-wlm munge failed"; }
  [ $policy_created = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "installed slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm) and munge in $(( $(date +%s) - t0 )) s"
fi

mkdir -p "$DIR/ctld" "$DIR/spool"

# The configuration, written in step 4; step 2 tells when a running cluster was started with a different one.
slurm_conf() {
  cat <<EOF
# Written by scripts/ci_start_slurm.sh: a one-node test cluster.
ClusterName=efficientnet-ci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# No systemd/cgroup delegation in containers: track processes by parent pid, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# The node may report more sockets/threads than declared below; accept the declared CPUs.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# sbatch --wait polls a job after 2 s, then every min(32, 4 x 2 s) while that stays below MinJobAge / 2 (integer
# division): with the default 300 a finished test job is noticed up to 32 s late; with 5, every 2 s, and its
# record is kept at least 5 s (until slurmctld's next purge pass), for the next poll to find.
MinJobAge=5
KillWait=10
# A requeued job may start again only cred_expire + 1 s after the requeue (Slurm sets its begin time so): the
# new launch credential must be newer, to the second, than the revocation of the old run's, or slurmd refuses
# it ("Job <id> already killed, do not launch batch job") and the job fails. The default 120 s would make the
# requeue test wait two minutes; 10 s (the minimum is 5) is still ample for a step launch on this node.
AuthInfo=cred_expire=10
# Nothing wakes the scheduler when that begin time passes: its periodic pass (60 s by default) starts the job.
# Every second on this one-node cluster, so the requeued job starts about 12 s after the requeue.
SchedulerParameters=sched_interval=1
NodeName=$NODE CPUs=$CPUS State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}
conf_text=$(slurm_conf)

# --- 2. Already running? -------------------------------------------------------------------------------------
if [ -f "$CONF" ] && SLURM_CONF="$CONF" timeout 10 sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
  log "cluster already up: $(SLURM_CONF="$CONF" sinfo -h -o '%P %D %T %N')"
  # Never restarted from here: the cluster may be running another checkout's jobs. One started from another
  # version of this script keeps its settings (e.g. Slurm's default 2-minute delay before a requeued job reruns).
  [ "$(cat "$CONF")" = "$conf_text" ] \
    || log "note: $CONF differs from what this version writes; stop the cluster (--stop) to apply it"
  echo "export SLURM_CONF=$CONF"
  exit 0
fi
stop_daemons

# --- 3. munge: the authentication Slurm's daemons and clients share -------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
  else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
# munged refuses to run as root; the package's munge user owns the key.
runuser -u munge -- /usr/sbin/munged --pid-file="$DIR/munged.pid.munge" \
  || die "munged failed to start (see /var/log/munge/munged.log)"
cp "$DIR/munged.pid.munge" "$DIR/munged.pid" 2>/dev/null || pgrep -u munge -n munged >"$DIR/munged.pid" || true
munge -n | unmunge >/dev/null || die "munge round trip failed"

# --- 4. slurm.conf -------------------------------------------------------------------------------------------
printf '%s\n' "$conf_text" >"$CONF"

# --- 5. Daemons ----------------------------------------------------------------------------------------------
# -c: start from a clean state (no jobs left over from an earlier cluster with the same state directory).
slurmctld -f "$CONF" -c || die "slurmctld failed to start; log: $DIR/slurmctld.log"
slurmd -f "$CONF" || die "slurmd failed to start; log: $DIR/slurmd.log"

for _ in $(seq 1 60); do
  state=$(SLURM_CONF="$CONF" sinfo -h -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*)
      log "cluster up in $(( $(date +%s) - start )) s: $(SLURM_CONF="$CONF" sinfo -h -o '%P %D %T %N %c')"
      echo "export SLURM_CONF=$CONF"
      exit 0 ;;
    *down*|*drain*)
      SLURM_CONF="$CONF" scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
die "node $NODE did not become idle within 60 s (state: '${state:-none}'); logs in $DIR"
