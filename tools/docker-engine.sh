#!/usr/bin/env bash
# Ensure a working Docker engine for the netlock.killswitch lab (idempotent).
#
#   tools/docker-engine.sh          # exit 0 once `docker info` works
#
# - If `docker info` already works: nothing to do.
# - Installs docker.io via apt if /usr/sbin/dockerd is missing.
# - Starts dockerd in the background (no systemd on the host), log in
#   /var/log/netlock-dockerd.log, and waits up to DOCKERD_WAIT (60) seconds.
#
# Address ranges: the default bridge and every network docker auto-allocates
# are pinned inside 198.18.0.0/15 so no docker network can shadow the host's
# uplink / package-mirror routes. They are verified with tools/labnet.py first.
#
# Flags: empirically (Debian 12 docker.io 20.10.24, kernel 6.x, ext4, cgroup v1
# hybrid) dockerd needs NO storage/iptables/cgroup flags here: overlay2 on ext4
# works, iptables (nft backend) works, and dockerd spawns its own containerd.
# Only --bip and --default-address-pool are passed, for the range rule above.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIP="198.18.255.1/24"
BIP_NET="198.18.255.0/24"
POOL_BASE="198.19.128.0/17"
POOL_SIZE=24
LOG=/var/log/netlock-dockerd.log
WAIT="${DOCKERD_WAIT:-60}"

say() { echo "docker-engine: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

if docker info >/dev/null 2>&1; then
    say "docker engine already running ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
    exit 0
fi

[[ $EUID -eq 0 ]] || die "must run as root to install/start dockerd"

if [[ ! -x /usr/sbin/dockerd ]]; then
    say "installing docker.io via apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends docker.io
fi
[[ -x /usr/sbin/dockerd ]] || die "/usr/sbin/dockerd still missing after apt install"
command -v docker >/dev/null || die "docker CLI not found in PATH"

if pgrep -x dockerd >/dev/null; then
    die "a dockerd process is running (pid $(pgrep -x dockerd | tr '\n' ' ')) but 'docker info' fails; see $LOG"
fi

say "checking address ranges $BIP_NET and $POOL_BASE against host routes"
python3 "$HERE/labnet.py" check "$BIP_NET" "$POOL_BASE" >&2 \
    || die "docker address ranges collide with the host; refusing to start dockerd"

say "starting dockerd (log: $LOG)"
nohup /usr/sbin/dockerd \
    --bip "$BIP" \
    --default-address-pool "base=$POOL_BASE,size=$POOL_SIZE" \
    >>"$LOG" 2>&1 </dev/null &
pid=$!
disown "$pid" 2>/dev/null || true

for ((i = 0; i < WAIT; i++)); do
    if docker info >/dev/null 2>&1; then
        say "docker engine ready after ${i}s (dockerd pid $pid)"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 20 "$LOG" >&2 || true
        die "dockerd exited during startup; see $LOG"
    fi
    sleep 1
done
tail -n 20 "$LOG" >&2 || true
die "docker info did not succeed within ${WAIT}s; dockerd pid $pid still running, see $LOG"
