#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests of the SLURM launcher (tests/test_slurm.py).
#
#   scripts/slurm_testbed.sh up      install what is missing, write the configs, start the daemons, wait until ready
#   scripts/slurm_testbed.sh down    cancel the jobs, stop the daemons (SIGTERM, then SIGKILL), leave nothing running
#   scripts/slurm_testbed.sh status  whether each daemon is alive (exit code 0 when all are), sinfo, squeue
#
# Needs root, Debian/Ubuntu (apt-get) and no systemd: every daemon is started by hand. Everything lives in the state
# directory ${SLURM_TESTBED_DIR:-/tmp/lth-slurm} (configs, MariaDB data, spool, logs, pid files); /etc/slurm/slurm.conf
# becomes a link to its slurm.conf so that sbatch/sinfo/sacct work without SLURM_CONF. The node is "localhost"
# (slurmd -N localhost) with this machine's CPUs and memory, partition "debug", accounting through slurmdbd + MariaDB
# (sacct must answer, otherwise submitit may wait forever for a job that was killed).
#
# Environment: SLURM_TESTBED_DIR (state directory), SLURM_TESTBED_CLUSTER (cluster name, default lth),
# SLURM_TESTBED_DB_PORT (MariaDB TCP port on 127.0.0.1, default 3307), SLURM_TESTBED_TIMEOUT (seconds to wait for
# each daemon, default 60).
set -euo pipefail

STATE=${SLURM_TESTBED_DIR:-/tmp/lth-slurm}
CLUSTER=${SLURM_TESTBED_CLUSTER:-lth}
DB_PORT=${SLURM_TESTBED_DB_PORT:-3307}
WAIT=${SLURM_TESTBED_TIMEOUT:-60}
ACCOUNT=lth
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=lth-testbed  # a throw-away database bound to 127.0.0.1 only
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stopped in reverse

RUN=$STATE/run
LOG=$STATE/log
DB_DIR=$STATE/mysql
DB_RUN=$STATE/mysqld
DB_SOCKET=$DB_RUN/mysqld.sock
SLURM_CONF_FILE=$STATE/slurm.conf
CONF_CHANGED=0
export SLURM_CONF=$SLURM_CONF_FILE

say() { echo "slurm-testbed: $*"; }
die() {
    echo "slurm-testbed: error: $*" >&2
    exit 1
}

# munged and mariadbd run as their own users and write their pid file, log and socket in a directory of their own.
pidfile() {
    case $1 in
    munged) echo "$STATE/munge/munged.pid" ;;
    mariadbd) echo "$DB_RUN/mariadbd.pid" ;;
    *) echo "$RUN/$1.pid" ;;
    esac
}

# The pid of a daemon when it is alive, else nothing (a pid file whose process is gone, or whose pid now belongs to
# another program, counts as stopped: nothing else is ever signalled).
alive_pid() {
    local file pid
    file=$(pidfile "$1")
    [[ -s $file ]] || return 0
    pid=$(tr -dc '0-9' <"$file")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]; then
        echo "$pid"
    fi
}

# wait_for DESCRIPTION COMMAND...: retry COMMAND (quietly) every 0.5 s for $WAIT seconds.
wait_for() {
    local what=$1 deadline=$((SECONDS + WAIT))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$what not ready after ${WAIT}s (logs in $LOG)"
        fi
        sleep 0.5
    done
}

need_root() { [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons)"; }

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        return
    fi
    say "installing ${missing[*]} (apt-get)"
    # No daemon may start from the packages' scripts: this script starts them, with its own configs.
    local policy=/usr/sbin/policy-rc.d ours=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        ours=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || say "apt-get update failed; trying the install with the current package lists"
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$STATE/apt.log" 2>&1; then
        ((ours)) && rm -f "$policy"
        tail -n 30 "$STATE/apt.log" >&2
        die "apt-get install failed (full log: $STATE/apt.log)"
    fi
    ((ours)) && rm -f "$policy"
    return 0
}

write_configs() {
    local cpus mem_mb real_mb def_mb
    cpus=$(nproc)
    mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    # Leave the system 10% (at least 512 MB): slurmd drains a node that has less memory than configured.
    real_mb=$((mem_mb - (mem_mb / 10 > 512 ? mem_mb / 10 : 512)))
    ((real_mb > 256)) || real_mb=256
    def_mb=$((real_mb / cpus < 1024 ? real_mb / cpus : 1024))

    cat >"$SLURM_CONF_FILE.new" <<EOF
# Written by scripts/slurm_testbed.sh: a single-node test cluster ($cpus CPUs, ${real_mb} MB).
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MailProg=/bin/true
# Jobs leave squeue soon after they end (sacct keeps them); requeue is allowed (submitit requeues on timeout and
# preemption); the scheduler looks at pending jobs every 2 s instead of every 60 s.
MinJobAge=10
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
InactiveLimit=0
Waittime=0
SlurmctldTimeout=60
SlurmdTimeout=120
MessageTimeout=20
NodeName=localhost CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
# A job that asks for no memory gets DefMemPerCPU per CPU (not the whole node), so small jobs run side by side.
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO DefMemPerCPU=$def_mb
EOF
    if ! cmp -s "$SLURM_CONF_FILE.new" "$SLURM_CONF_FILE"; then CONF_CHANGED=1; fi
    mv "$SLURM_CONF_FILE.new" "$SLURM_CONF_FILE"
    chmod 644 "$SLURM_CONF_FILE"

    cat >"$STATE/slurmdbd.conf" <<EOF
# Written by scripts/slurm_testbed.sh.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
    chown slurm:slurm "$STATE/slurmdbd.conf"
    chmod 600 "$STATE/slurmdbd.conf"

    # Client commands read /etc/slurm/slurm.conf: point it at ours (an existing real file is left alone).
    mkdir -p /etc/slurm
    if [[ -L /etc/slurm/slurm.conf || ! -e /etc/slurm/slurm.conf ]]; then
        ln -sfn "$SLURM_CONF_FILE" /etc/slurm/slurm.conf
    elif ! cmp -s /etc/slurm/slurm.conf "$SLURM_CONF_FILE"; then
        say "warning: /etc/slurm/slurm.conf is a real file: export SLURM_CONF=$SLURM_CONF_FILE to use the testbed"
    fi
}

start_munged() {
    [[ -n $(alive_pid munged) ]] && return
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating the munge key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge "$STATE/munge"
    chown munge:munge /run/munge /var/lib/munge "$STATE/munge"
    chmod 755 /run/munge "$STATE/munge"
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log"
    wait_for "munged" bash -c 'munge -n | unmunge'
}

db() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }

start_mariadb() {
    if [[ -z $(alive_pid mariadbd) ]]; then
        if [[ ! -d $DB_DIR/mysql ]]; then
            say "initialising MariaDB in $DB_DIR"
            mkdir -p "$DB_DIR"
            chown mysql:mysql "$DB_DIR"
            mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" --skip-test-db \
                --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
                die "mariadb-install-db failed (see $LOG/mariadb-install.log)"
        fi
        mkdir -p "$DB_RUN"
        chown mysql:mysql "$DB_RUN"
        chmod 755 "$DB_RUN"
        say "starting MariaDB (127.0.0.1:$DB_PORT)"
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCKET" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DB_RUN/mariadbd.pid" \
            --log-error="$DB_RUN/mariadbd.log" --innodb-buffer-pool-size=512M --innodb-log-file-size=64M \
            --innodb-lock-wait-timeout=900 --max-allowed-packet=64M </dev/null >/dev/null 2>&1 &
        wait_for "MariaDB (log: $DB_RUN/mariadbd.log)" mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping
    fi
    db <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    [[ -n $(alive_pid slurmdbd) ]] && return
    say "starting slurmdbd"
    /usr/sbin/slurmdbd
    wait_for "slurmdbd" sacctmgr -n show cluster
}

register_accounting() {
    if [[ -z $(sacctmgr -n -P show cluster "$CLUSTER" format=cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if [[ -z $(sacctmgr -n -P show account "$ACCOUNT" format=account) ]]; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="lth-runner tests" Organization=lth \
            >/dev/null
    fi
    local user
    for user in root ${SUDO_USER:-}; do
        if [[ -z $(sacctmgr -n -P show assoc where user="$user" account="$ACCOUNT" format=user) ]]; then
            sacctmgr -i add user "$user" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
        fi
    done
}

start_slurmctld() {
    [[ -n $(alive_pid slurmctld) ]] && return
    say "starting slurmctld"
    /usr/sbin/slurmctld
    wait_for "slurmctld" scontrol ping
}

node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -n 1; }

start_slurmd() {
    [[ -n $(alive_pid slurmd) ]] || {
        say "starting slurmd -N localhost"
        /usr/sbin/slurmd -N localhost
    }
    local deadline=$((SECONDS + WAIT)) state resumed=0
    while true; do
        state=$(node_state)
        case $state in
        idle | mixed | allocated) break ;;
        down* | drain* | fail*)
            if ((!resumed)); then
                say "node is $state: resuming it"
                scontrol update NodeName=localhost State=RESUME || true
                resumed=1
            fi
            ;;
        esac
        if ((SECONDS >= deadline)); then
            scontrol show node localhost >&2 || true
            die "the node is '${state:-unknown}', not idle, after ${WAIT}s (logs in $LOG)"
        fi
        sleep 0.5
    done
}

up() {
    need_root
    local started=$SECONDS
    mkdir -p "$STATE"
    chmod 755 "$STATE"
    install_packages
    id slurm >/dev/null 2>&1 || die "the slurm user is missing (the slurm packages create it)"
    mkdir -p "$RUN" "$LOG" "$STATE/ctld" "$STATE/spool"
    chown slurm:slurm "$RUN" "$LOG" "$STATE/ctld"
    chmod 755 "$RUN" "$LOG"
    write_configs
    start_munged
    start_mariadb
    start_slurmdbd
    register_accounting
    local ctld_was_running
    ctld_was_running=$(alive_pid slurmctld)
    start_slurmctld
    if [[ -n $ctld_was_running && $CONF_CHANGED == 1 ]]; then
        say "slurm.conf changed: scontrol reconfigure"
        scontrol reconfigure
    fi
    start_slurmd
    wait_for "sacct" sacct -n -X -S now-1minute
    say "up in $((SECONDS - started))s: node localhost $(node_state), partition debug, cluster $CLUSTER, state $STATE"
}

# stop NAME: SIGTERM, up to 20 s to exit, then SIGKILL.
stop() {
    local pid i
    pid=$(alive_pid "$1")
    [[ -n $pid ]] || return 0
    say "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$1 ignored SIGTERM: killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$(pidfile "$1")"
}

# Pids of slurmstepd processes (job steps of this node) still running: only this testbed's slurmd starts them here
# (a second Slurm on the same machine could not share the ports).
stepd_pids() {
    local proc
    for proc in /proc/[0-9]*; do
        [[ $(readlink "$proc/exe" 2>/dev/null) == */slurmstepd ]] && echo "${proc#/proc/}"
    done
    return 0
}

down() {
    need_root
    [[ -d $STATE ]] || {
        say "nothing to stop ($STATE does not exist)"
        return
    }
    if [[ -n $(alive_pid slurmctld) ]]; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs $jobs"
            # shellcheck disable=SC2086
            scancel $jobs || true
            local deadline=$((SECONDS + 20))
            while [[ -n $(squeue -h -o %i 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 0.5; done
        fi
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        stop "${DAEMONS[i]}"
    done
    local pid
    for pid in $(stepd_pids); do
        say "killing leftover job step daemon slurmstepd (pid $pid)"
        kill -KILL "$pid" 2>/dev/null || true
    done
    say "down (state kept in $STATE; rm -rf it for a fresh cluster)"
}

status() {
    local name pid code=0
    for name in "${DAEMONS[@]}"; do
        pid=$(alive_pid "$name")
        if [[ -n $pid ]]; then
            printf '%-10s running (pid %s)\n' "$name" "$pid"
        else
            printf '%-10s stopped\n' "$name"
            code=1
        fi
    done
    if [[ -n $(alive_pid slurmctld) ]]; then
        echo
        sinfo || true
        echo
        squeue || true
    fi
    return $code
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*)
    echo "usage: $0 up|down|status  (state in \${SLURM_TESTBED_DIR:-/tmp/lth-slurm})" >&2
    exit 2
    ;;
esac
