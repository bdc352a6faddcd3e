#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the SLURM end-to-end tests (tests/e2e) and for
# trying `hydra/launcher=slurm` without a cluster. Needs root (it installs Debian's packages when
# missing and starts munge, slurmctld and slurmd as daemons).
#
#     bash scripts/slurm_local.sh up       # install if needed, write slurm.conf, start, wait for an idle node
#     bash scripts/slurm_local.sh status   # the daemons and the node's state
#     bash scripts/slurm_local.sh down     # stop the daemons
#
# The node is this host with its CPUs and memory, no GPU, one partition `cpu`; no accounting
# (`sacct` then fails, which is why conf/hydra/launcher/slurm_cpu.yaml polls quietly).
set -euo pipefail

conf_dir=/etc/slurm
conf=$conf_dir/slurm.conf
host=$(hostname -s)

fail() { echo "slurm_local: $*" >&2; exit 1; }

install() {
    local missing=()
    for bin in sbatch slurmctld slurmd munged; do
        command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
    done
    ((${#missing[@]} == 0)) && return
    [ "$(id -u)" = 0 ] || fail "missing ${missing[*]}; installing Debian's slurm-wlm and munge needs root"
    echo "installing slurm-wlm and munge (missing: ${missing[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null \
        || fail "apt-get install slurm-wlm munge failed (is the package index reachable? try apt-get update)"
}

write_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))  # MB, 1 GB left to the system
    mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat >"$conf" <<EOF
# Written by scripts/slurm_local.sh: one node (this host), no GPU, no accounting.
ClusterName=earlyexit-local
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmUser=root
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if ! pgrep -x munged >/dev/null; then
        [ -s /etc/munge/munge.key ] || mungekey --create >/dev/null 2>&1 \
            || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
        mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
        runuser -u munge -- munged 2>/dev/null || munged --force || fail "munged did not start"
    fi
    pgrep -x slurmctld >/dev/null || slurmctld -c || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
    pgrep -x slurmd >/dev/null || slurmd || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"
}

wait_idle() {
    local state=""
    for _ in $(seq 60); do
        state=$(sinfo -h -N -o %T 2>/dev/null | head -1)
        case $state in
            idle|mixed|allocated) echo "slurm_local: node $host is $state (partition cpu)"; return ;;
            down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    fail "the node did not come up idle within 60 s (last state: ${state:-none}); see /var/log/slurm/"
}

status() {
    for d in munged slurmctld slurmd; do
        printf '%-10s %s\n' "$d" "$(pgrep -x "$d" >/dev/null && echo running || echo stopped)"
    done
    command -v sinfo >/dev/null && sinfo -N -o "%N %T %c %m" 2>/dev/null || true
}

down() {
    for d in slurmd slurmctld; do
        pkill -x "$d" 2>/dev/null && echo "stopped $d" || true
    done
}

case ${1:-} in
    up) install; write_conf; start; wait_idle ;;
    status) status ;;
    down) down ;;
    *) echo "usage: bash scripts/slurm_local.sh up|status|down" >&2; exit 2 ;;
esac
