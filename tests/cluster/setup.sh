#!/usr/bin/env bash
# Idempotent single-node test cluster: Slurm (slurmctld + slurmd + slurmdbd with a private
# MariaDB for sacct), munge, and an sshd on 127.0.0.1:2222 for the SSH transport.
#
#   sudo bash tests/cluster/setup.sh            # install (if needed), start, verify
#   . /var/tmp/akb-lab/env.sh                   # SLURM_CONF, AKB_SSH_* ... for tests
#   sudo bash tests/cluster/stop.sh [--purge]   # stop (and optionally wipe the lab)
#
# For Debian 12, run as root. All state, spool, logs, pid files, the MariaDB datadir, configs
# and keys live in the lab directory ${AKB_LAB:-/var/tmp/akb-lab}; /etc/slurm/slurm.conf and
# /etc/slurm/slurmdbd.conf are symlinked to the lab's files so plain `sbatch` works everywhere.
# Re-running on a healthy cluster only verifies it. Set AKB_LAB_CHECK_JOB=1 to also run a test
# job on a re-run (it always runs when a Slurm daemon was (re)started).
set -euo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh must run as root (it installs packages and starts system daemons)" >&2
    exit 1
fi

CLUSTER=akblab
PARTITION=debug
NODE=$(hostname -s)
SSH_PORT=2222
DB_PORT=3307
DBD_PORT=6819
CTLD_PORT=6817
SLURMD_PORT=6818
# chromium + fonts-liberation: the browser of the monitoring page's tests (Playwright drives
# Debian's build; browser downloads are not possible here).
PACKAGES=(munge slurmctld slurmd slurm-client libslurm-dev openssh-server openssh-client
    slurmdbd mariadb-server mariadb-client systemd git chromium fonts-liberation)

SLURM_CONF_FILE=$LAB/slurm.conf
DBD_CONF_FILE=$LAB/slurmdbd.conf
MY_CNF=$LAB/mariadb/my.cnf
DB_SOCK=$LAB/mariadb/mariadb.sock
SSH_DIR=$LAB/ssh
export SLURM_CONF=$SLURM_CONF_FILE

# Names of the daemons this run started or restarted (for the summary).
started=()

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

# write_if_changed FILE MODE < content; returns 0 if the file was (re)written, 1 if unchanged.
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file" && [[ $(stat -c %a "$file") == "$mode" ]]; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

# wait_until TIMEOUT_SECONDS CMD... : poll CMD every 0.2 s.
wait_until() {
    local timeout=$1 deadline
    shift
    deadline=$(( ${EPOCHREALTIME%.*} + timeout ))
    until "$@" >/dev/null 2>&1; do
        (( ${EPOCHREALTIME%.*} < deadline )) || return 1
        sleep 0.2
    done
}

port_open() { timeout 1 bash -c ": </dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Refuse to start a daemon on a port some other process already holds.
require_port_free() {
    local port=$1 what=$2
    if port_open "$port"; then
        die "$what: port 127.0.0.1:$port is already in use by a process this lab did not start" \
            "${@:3}"
    fi
}

# Start a command fully detached from this script's stdio (CI reads our stdout to EOF).
spawn() {
    local out=$1
    shift
    setsid -f "$@" </dev/null >>"$out" 2>&1 9>&-   # fd 9 is the setup lock
}

# Before starting a daemon: stop lab processes of that kind that lost their pid file
# (otherwise the new one would find its port taken).
clear_stale() { # NAME PIDFILE COMM
    [[ -z $(lab_pids "$3") ]] || stop_daemon "$@"
}

link_into_etc() {
    local target=$1 link=$2
    mkdir -p "$(dirname "$link")"
    if [[ -L $link ]]; then
        [[ $(readlink "$link") == "$target" ]] && return 0
    elif [[ -e $link ]]; then
        mv -f "$link" "$link.akb-orig"
        log "moved existing $link to $link.akb-orig"
    fi
    ln -sfn "$target" "$link"
}

# ---------------------------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------------------------
created_policy_rc=0
cleanup_policy_rc() {
    if (( created_policy_rc )); then
        rm -f /usr/sbin/policy-rc.d
        created_policy_rc=0
    fi
}
trap cleanup_policy_rc EXIT

install_packages() {
    local missing=() p status
    # One dpkg call for the common case (everything installed), then per package if needed.
    status=$(dpkg -s "${PACKAGES[@]}" 2>/dev/null || true)
    if [[ $(grep -cx 'Status: install ok installed' <<<"$status") != "${#PACKAGES[@]}" ]]; then
        for p in "${PACKAGES[@]}"; do
            status=$(dpkg -s "$p" 2>/dev/null || true)
            grep -qx 'Status: install ok installed' <<<"$status" || missing+=("$p")
        done
    fi
    if (( ${#missing[@]} == 0 )); then
        log "packages: all installed"
        return
    fi
    log "packages: installing ${missing[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # Keep package scripts from starting the system's own munge/slurm/mariadb/ssh services.
        printf '#!/bin/sh\n# temporary, created by tests/cluster/setup.sh\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy_rc=1
    fi
    local apt_log=/var/tmp/akb-lab-apt.log
    if ! { apt-get -o DPkg::Lock::Timeout=300 update &&
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
            --no-install-recommends "${PACKAGES[@]}"; } >"$apt_log" 2>&1; then
        die "apt-get failed" "$apt_log"
    fi
    cleanup_policy_rc
    log "packages: installed (log: $apt_log)"
}

# ---------------------------------------------------------------------------------------------
# 2. Lab directory and configuration files
# ---------------------------------------------------------------------------------------------
make_lab_dirs() {
    install -d -m 0755 "$LAB" "$LAB/run" "$LAB/log" "$LAB/slurm" "$LAB/slurm/spool"
    install -d -m 0700 "$LAB/slurm/state"
    install -d -m 0700 -o munge -g munge "$LAB/munge"
    install -d -m 0755 -o mysql -g mysql "$LAB/mariadb"
    install -d -m 0700 "$SSH_DIR"
}

slurm_conf_changed=0
dbd_conf_changed=0
my_cnf_changed=0
sshd_conf_changed=0

write_configs() {
    local db_pass=
    if [[ -r $DBD_CONF_FILE ]]; then
        db_pass=$(sed -n 's/^StoragePass=//p' "$DBD_CONF_FILE")
    fi
    if [[ -z $db_pass ]]; then
        db_pass=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
        db_pass=${db_pass:0:24}
    fi
    DB_PASS=$db_pass

    if write_if_changed "$SLURM_CONF_FILE" 644 <<EOF; then
# Generated by tests/cluster/setup.sh; rewritten (and daemons restarted) when it changes.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$LAB/slurm/state
SlurmdSpoolDir=$LAB/slurm/spool
SlurmctldPidFile=$LAB/run/slurmctld.pid
SlurmdPidFile=$LAB/run/slurmd.pid
SlurmctldLogFile=$LAB/log/slurmctld.log
SlurmdLogFile=$LAB/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0
KillWait=5
OverTimeLimit=0
MinJobAge=300
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=16 RealMemory=20000 TmpDisk=4096 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
        slurm_conf_changed=1
    fi

    if write_if_changed "$DBD_CONF_FILE" 600 <<EOF; then
# Generated by tests/cluster/setup.sh. Must stay mode 0600, owned by SlurmUser (root).
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$LAB/run/slurmdbd.pid
LogFile=$LAB/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
        dbd_conf_changed=1
    fi

    if write_if_changed "$MY_CNF" 644 <<EOF; then
# Private MariaDB for slurmdbd, generated by tests/cluster/setup.sh.
[client]
socket=$DB_SOCK
port=$DB_PORT

[mysqld]
user=mysql
datadir=$LAB/mariadb/data
socket=$DB_SOCK
pid-file=$LAB/mariadb/mariadb.pid
log-error=$LAB/mariadb/mariadb.err
port=$DB_PORT
bind-address=127.0.0.1
skip-name-resolve
performance_schema=OFF
innodb_buffer_pool_size=128M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
max_allowed_packet=16M
EOF
        my_cnf_changed=1
    fi

    if write_if_changed "$SSH_DIR/sshd_config" 644 <<EOF; then
# Test sshd for the SSH transport, generated by tests/cluster/setup.sh.
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $SSH_DIR/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile $SSH_DIR/authorized_keys
SetEnv SLURM_CONF=$SLURM_CONF_FILE
MaxSessions 100
MaxStartups 100:30:200
LogLevel VERBOSE
UseDNS no
PrintMotd no
X11Forwarding no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
        sshd_conf_changed=1
    fi
}

# ---------------------------------------------------------------------------------------------
# 3. Daemons
# ---------------------------------------------------------------------------------------------
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

ensure_munge() {
    local pid
    install -d -m 0755 -o munge -g munge /run/munge
    if munge_ok; then
        if pid=$(pid_of "$LAB/munge/munged.pid" munged); then
            log "munged: running (pid $pid)"
        else
            log "munged: a munged not started by this lab is answering; using it"
        fi
        return
    fi
    [[ -r /etc/munge/munge.key ]] || die "munge: /etc/munge/munge.key is missing"
    clear_stale munged "$LAB/munge/munged.pid" munged
    runuser -u munge -- /usr/sbin/munged \
        --pid-file="$LAB/munge/munged.pid" \
        --log-file="$LAB/munge/munged.log" \
        --seed-file="$LAB/munge/munged.seed" </dev/null >>"$LAB/log/munged.out" 2>&1 9>&- ||
        die "munged failed to start" "$LAB/munge/munged.log" "$LAB/log/munged.out"
    wait_until 15 munge_ok || die "munged started but 'munge -n | unmunge' fails" \
        "$LAB/munge/munged.log" "$LAB/log/munged.out"
    started+=(munged)
    log "munged: started (pid $(cat "$LAB/munge/munged.pid" 2>/dev/null))"
}

db_ok() { mariadb-admin --defaults-file="$MY_CNF" -uroot --connect-timeout=2 ping; }
db_sql() { mariadb --defaults-file="$MY_CNF" -uroot --batch; }

ensure_mariadb() {
    local pid errlog=$LAB/mariadb/mariadb.err
    if pid=$(pid_of "$LAB/mariadb/mariadb.pid" mariadbd); then
        if (( my_cnf_changed )); then
            log "mariadb: my.cnf changed, restarting"
            stop_daemon mariadb "$LAB/mariadb/mariadb.pid" mariadbd 60
        elif db_ok >/dev/null 2>&1; then
            log "mariadb: running (pid $pid)"
        else
            wait_until 30 db_ok || die "mariadb: pid $pid is not answering on $DB_SOCK" "$errlog"
            log "mariadb: running (pid $pid)"
        fi
    fi
    if ! pid_of "$LAB/mariadb/mariadb.pid" mariadbd >/dev/null; then
        if [[ ! -f $LAB/mariadb/.installed ]]; then
            log "mariadb: initialising datadir (mariadb-install-db)"
            rm -rf "$LAB/mariadb/data"
            mariadb-install-db --defaults-file="$MY_CNF" --user=mysql \
                --datadir="$LAB/mariadb/data" --skip-test-db \
                --auth-root-authentication-method=socket >"$LAB/mariadb/install.log" 2>&1 ||
                die "mariadb-install-db failed" "$LAB/mariadb/install.log"
            touch "$LAB/mariadb/.installed"
        fi
        clear_stale mariadb "$LAB/mariadb/mariadb.pid" mariadbd 60
        require_port_free "$DB_PORT" mariadb
        spawn "$LAB/mariadb/mariadbd.out" /usr/sbin/mariadbd --defaults-file="$MY_CNF"
        wait_until 60 db_ok ||
            die "mariadb did not come up (socket $DB_SOCK, port $DB_PORT)" "$errlog" \
                "$LAB/mariadb/mariadbd.out"
        started+=(mariadb)
        log "mariadb: started (pid $(cat "$LAB/mariadb/mariadb.pid" 2>/dev/null))"
    fi
    # Idempotent; keeps the DB user's password in sync with slurmdbd.conf.
    db_sql <<EOF || die "mariadb: creating the slurm DB user failed" "$errlog"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

dbd_ok() { sacctmgr -n -P list cluster format=cluster; }

ensure_slurmdbd() {
    local pid logf=$LAB/log/slurmdbd.log
    if pid=$(pid_of "$LAB/run/slurmdbd.pid" slurmdbd); then
        if (( dbd_conf_changed )); then
            log "slurmdbd: slurmdbd.conf changed, restarting"
            stop_daemon slurmdbd "$LAB/run/slurmdbd.pid" slurmdbd
        else
            wait_until 30 dbd_ok || die "slurmdbd: pid $pid is not answering" "$logf"
            log "slurmdbd: running (pid $pid)"
            return
        fi
    fi
    clear_stale slurmdbd "$LAB/run/slurmdbd.pid" slurmdbd
    require_port_free "$DBD_PORT" slurmdbd
    spawn "$LAB/log/slurmdbd.out" /usr/sbin/slurmdbd
    wait_until 60 dbd_ok || die "slurmdbd did not come up on port $DBD_PORT" "$logf" \
        "$LAB/log/slurmdbd.out"
    started+=(slurmdbd)
    log "slurmdbd: started (pid $(cat "$LAB/run/slurmdbd.pid" 2>/dev/null))"
}

ctld_ok() { [[ $(scontrol ping 2>&1) == *"is UP"* ]]; }

ensure_slurmctld() {
    local pid logf=$LAB/log/slurmctld.log
    if pid=$(pid_of "$LAB/run/slurmctld.pid" slurmctld); then
        if (( slurm_conf_changed )); then
            log "slurmctld: slurm.conf changed, restarting slurmctld and slurmd"
            stop_daemon slurmd "$LAB/run/slurmd.pid" slurmd
            stop_daemon slurmctld "$LAB/run/slurmctld.pid" slurmctld
        else
            wait_until 30 ctld_ok || die "slurmctld: pid $pid is not answering" "$logf"
            log "slurmctld: running (pid $pid)"
            return
        fi
    fi
    clear_stale slurmctld "$LAB/run/slurmctld.pid" slurmctld
    require_port_free "$CTLD_PORT" slurmctld
    spawn "$LAB/log/slurmctld.out" /usr/sbin/slurmctld -f "$SLURM_CONF_FILE"
    wait_until 60 ctld_ok || die "slurmctld did not come up on port $CTLD_PORT" "$logf" \
        "$LAB/log/slurmctld.out"
    started+=(slurmctld)
    log "slurmctld: started (pid $(cat "$LAB/run/slurmctld.pid" 2>/dev/null))"
}

ensure_slurmd() {
    local pid logf=$LAB/log/slurmd.log
    if pid=$(pid_of "$LAB/run/slurmd.pid" slurmd); then
        if (( slurm_conf_changed )); then
            log "slurmd: slurm.conf changed, restarting"
            stop_daemon slurmd "$LAB/run/slurmd.pid" slurmd
        else
            log "slurmd: running (pid $pid)"
            return
        fi
    fi
    clear_stale slurmd "$LAB/run/slurmd.pid" slurmd
    require_port_free "$SLURMD_PORT" slurmd
    spawn "$LAB/log/slurmd.out" /usr/sbin/slurmd -f "$SLURM_CONF_FILE"
    wait_until 30 pid_of "$LAB/run/slurmd.pid" slurmd ||
        die "slurmd did not start" "$logf" "$LAB/log/slurmd.out"
    started+=(slurmd)
    log "slurmd: started (pid $(cat "$LAB/run/slurmd.pid" 2>/dev/null))"
}

node_state() {
    local out
    out=$(sinfo -h -n "$NODE" -o %T 2>/dev/null) || return 1
    echo "${out%%$'\n'*}"
}

# Node must end up usable: idle (or mixed/allocated when other people's jobs are running).
ensure_node_usable() {
    local deadline state last_resume=0 now
    deadline=$(( ${EPOCHREALTIME%.*} + 60 ))
    while :; do
        state=$(node_state || true)
        case $state in
            idle | mixed | allocated | completing) break ;;
            down* | drain*)
                now=${EPOCHREALTIME%.*}
                if (( now - last_resume >= 3 )); then
                    log "node $NODE is '$state', resuming it"
                    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                    last_resume=$now
                fi
                ;;
        esac
        if (( ${EPOCHREALTIME%.*} >= deadline )); then
            scontrol show node "$NODE" >&2 || true
            die "node $NODE did not become idle (state '${state:-?}')" \
                "$LAB/log/slurmd.log" "$LAB/log/slurmctld.log"
        fi
        sleep 0.2
    done
    log "node $NODE: $state"
}

# Jobs a slurmctld recovers from its state files after a reboot or a killed lab belong to
# no running test (they died with their slurmd); they would hold the node for their whole
# time limit and be requeued. Cancel them when this run started slurmctld itself.
cancel_leftover_jobs() {
    local ids deadline
    ids=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ') || true
    [[ -n ${ids// /} ]] || return 0
    log "slurmctld: cancelling $(wc -w <<<"$ids") job(s) recovered from an earlier lab run"
    # shellcheck disable=SC2086
    scancel $ids >/dev/null 2>&1 || true
    deadline=$(( ${EPOCHREALTIME%.*} + 60 ))
    while [[ -n $(squeue -h -o %i -t PD,R,CG,S 2>/dev/null) ]]; do
        (( ${EPOCHREALTIME%.*} < deadline )) || {
            squeue >&2 || true
            die "leftover jobs still in the queue after scancel" "$LAB/log/slurmctld.log"
        }
        sleep 0.25
    done
}

job_state_in_sacct() {
    local out
    out=$(sacct -n -X -P -j "$1" -o State 2>/dev/null) || true
    echo "${out%%$'\n'*}"
}

check_test_job() {
    local id state deadline
    id=$(sbatch --parsable -p "$PARTITION" -J akb-setup-check -o /dev/null --wrap true) ||
        die "sbatch --wrap true failed" "$LAB/log/slurmctld.log"
    id=${id%%;*}
    deadline=$(( ${EPOCHREALTIME%.*} + 60 ))
    while :; do
        state=$(job_state_in_sacct "$id")
        [[ $state == COMPLETED ]] && break
        case $state in
            FAILED | CANCELLED* | NODE_FAIL | TIMEOUT | OUT_OF_MEMORY | BOOT_FAIL)
                die "test job $id ended $state" "$LAB/log/slurmd.log" "$LAB/log/slurmctld.log" ;;
        esac
        if (( ${EPOCHREALTIME%.*} >= deadline )); then
            scontrol show job "$id" >&2 || true
            die "test job $id not COMPLETED in sacct after 60 s (sacct state '${state:-none}')" \
                "$LAB/log/slurmctld.log" "$LAB/log/slurmdbd.log"
        fi
        sleep 0.25
    done
    log "test job $id: COMPLETED in sacct"
}

ssh_cmd() {
    ssh -F /dev/null -i "$SSH_DIR/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o UserKnownHostsFile="$SSH_DIR/known_hosts" -o StrictHostKeyChecking=yes \
        -o ConnectTimeout=5 -p "$SSH_PORT" root@127.0.0.1 "$@"
}

ensure_ssh_keys() {
    [[ -s $SSH_DIR/ssh_host_ed25519_key ]] ||
        ssh-keygen -q -t ed25519 -N '' -C "akb-lab-host" -f "$SSH_DIR/ssh_host_ed25519_key"
    [[ -s $SSH_DIR/id_ed25519 ]] ||
        ssh-keygen -q -t ed25519 -N '' -C "akb-lab-client" -f "$SSH_DIR/id_ed25519"
    local pub
    pub=$(cat "$SSH_DIR/id_ed25519.pub")
    touch "$SSH_DIR/authorized_keys"
    chmod 600 "$SSH_DIR/authorized_keys"
    grep -qxF "$pub" "$SSH_DIR/authorized_keys" || printf '%s\n' "$pub" >>"$SSH_DIR/authorized_keys"
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")" |
        write_if_changed "$SSH_DIR/known_hosts" 644 || true
}

ensure_sshd() {
    local pid logf=$SSH_DIR/sshd.log
    install -d -m 0755 /run/sshd
    ensure_ssh_keys
    if pid=$(pid_of "$SSH_DIR/sshd.pid" sshd); then
        if (( sshd_conf_changed )); then
            log "sshd: sshd_config changed, restarting"
            stop_daemon sshd "$SSH_DIR/sshd.pid" sshd
        else
            log "sshd: running (pid $pid)"
            return
        fi
    fi
    /usr/sbin/sshd -t -f "$SSH_DIR/sshd_config" >"$LAB/log/sshd-t.out" 2>&1 ||
        die "sshd -t rejects $SSH_DIR/sshd_config" "$LAB/log/sshd-t.out"
    clear_stale sshd "$SSH_DIR/sshd.pid" sshd
    require_port_free "$SSH_PORT" sshd
    spawn "$LAB/log/sshd.out" /usr/sbin/sshd -f "$SSH_DIR/sshd_config" -E "$logf"
    wait_until 15 port_open "$SSH_PORT" || die "sshd did not come up on port $SSH_PORT" "$logf" \
        "$LAB/log/sshd.out"
    started+=(sshd)
    log "sshd: started (pid $(cat "$SSH_DIR/sshd.pid" 2>/dev/null))"
}

check_ssh() {
    local out
    if ! out=$(ssh_cmd sbatch --version 2>&1); then
        printf '%s\n' "$out" >&2
        if grep '^root:!' /etc/shadow >/dev/null 2>&1; then
            echo "note: root's password field starts with '!' (locked); with UsePAM no sshd" \
                "refuses even key logins for a locked account" >&2
        fi
        die "ssh root@127.0.0.1:$SSH_PORT sbatch --version failed" "$SSH_DIR/sshd.log"
    fi
    log "ssh: 'sbatch --version' over ssh -> $out"
}

write_env_sh() {
    {
        echo "# Source me: test-cluster settings written by tests/cluster/setup.sh"
        printf 'export AKB_LAB=%q\n' "$LAB"
        printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
        printf 'export AKB_SSH_HOST=%q\n' 127.0.0.1
        printf 'export AKB_SSH_PORT=%q\n' "$SSH_PORT"
        printf 'export AKB_SSH_USER=%q\n' root
        printf 'export AKB_SSH_KEY=%q\n' "$SSH_DIR/id_ed25519"
        printf 'export AKB_SSH_KNOWN_HOSTS=%q\n' "$SSH_DIR/known_hosts"
        printf 'export AKB_SLURM_PARTITION=%q\n' "$PARTITION"
    } | write_if_changed "$LAB/env.sh" 644 || true
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
log "test cluster setup: lab $LAB, node $NODE"
install_packages
make_lab_dirs
# One setup at a time per lab.
exec 9>"$LAB/.setup.lock"
flock -w 600 9 || die "another setup.sh holds $LAB/.setup.lock"

write_configs
ensure_munge
ensure_mariadb
ensure_slurmdbd
ensure_slurmctld
ensure_slurmd
for d in "${started[@]}"; do
    [[ $d == slurmctld ]] && cancel_leftover_jobs
done
ensure_node_usable

slurm_started=0
for d in "${started[@]}"; do
    case $d in slurmdbd | slurmctld | slurmd) slurm_started=1 ;; esac
done
if (( slurm_started )) || [[ ${AKB_LAB_CHECK_JOB:-0} == 1 ]]; then
    check_test_job
fi

# Only a lab that came up healthy takes over /etc/slurm (plain sbatch, ssh sessions).
link_into_etc "$SLURM_CONF_FILE" /etc/slurm/slurm.conf
link_into_etc "$DBD_CONF_FILE" /etc/slurm/slurmdbd.conf

ensure_sshd
check_ssh
write_env_sh

echo
echo "Test cluster ready in $(elapsed | tr -d ' ')" \
    "(started: ${started[*]:-nothing, all were running})"
echo "  Slurm    : $(sinfo -V), cluster $CLUSTER, partition $PARTITION," \
    "node $NODE ($(node_state)), SLURM_CONF=$SLURM_CONF_FILE"
echo "  accounting: slurmdbd 127.0.0.1:$DBD_PORT, MariaDB 127.0.0.1:$DB_PORT ($DB_SOCK)"
echo "  ssh      : ssh -i $SSH_DIR/id_ed25519 -o UserKnownHostsFile=$SSH_DIR/known_hosts" \
    "-p $SSH_PORT root@127.0.0.1"
echo "  logs     : $LAB/log, $LAB/mariadb/mariadb.err, $LAB/munge/munged.log, $SSH_DIR/sshd.log"
echo "  env      : . $LAB/env.sh      stop: bash $here/stop.sh [--purge]"
