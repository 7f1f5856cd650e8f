#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine for the scale-out tests (issue 18; recipe measured in
# ../shared/docs/platform-notes.md): Debian's munge, slurmctld and slurmd, as root, without systemd or cgroups.
#
#   .ci/slurm_one_node.sh install   apt-get install slurmctld slurmd slurm-client munge (sudo when not root)
#   .ci/slurm_one_node.sh start     write /etc/slurm/slurm.conf, start munged, slurmctld, slurmd; wait for `sinfo`
#   .ci/slurm_one_node.sh stop      stop the three daemons by the PIDs in their pid files (started by `start`)
#
# The node offers every core of this machine and 8000 MB; partition "debug" (the default).
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
RUN=/run/tomoguide-slurm

case "${1:-}" in
install)
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  ;;
start)
  H=$(hostname)
  $SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge "$RUN"
  $SUDO tee /etc/slurm/slurm.conf >/dev/null <<CONF
ClusterName=local
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$H CPUs=$(nproc) RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF
  if [ ! -f /etc/munge/munge.key ]; then
    $SUDO dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  $SUDO chown munge:munge /etc/munge/munge.key /run/munge
  $SUDO chmod 400 /etc/munge/munge.key
  $SUDO su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid"
  $SUDO /usr/sbin/slurmctld
  $SUDO /usr/sbin/slurmd
  for _ in $(seq 1 30); do
    if sinfo -h -o '%t' 2>/dev/null | grep -q idle; then sinfo; exit 0; fi
    sleep 1
  done
  echo "slurm_one_node: the node did not become idle in 30 s" >&2
  sinfo >&2 || true
  exit 1
  ;;
stop)
  for f in "$RUN/slurmd.pid" "$RUN/slurmctld.pid" /run/munge/munged.pid; do
    if [ -f "$f" ]; then
      pid=$(cat "$f")
      $SUDO kill "$pid" 2>/dev/null || true
    fi
  done
  sleep 1
  ;;
*)
  echo "usage: $0 install|start|stop" >&2
  exit 2
  ;;
esac
