#!/usr/bin/env bash
# Build the netlock.killswitch lab image locally with debootstrap (no registry).
#
#   tools/build-image.sh            # prints the image reference (last stdout line)
#   FORCE=1 tools/build-image.sh    # rebuild even if the tag already exists
#
# The tag is netlock-lab:<hash>, <hash> = short sha256 over this script, the
# host's apt sources file and the package list; netlock-lab:latest points to
# the same image. An unchanged recipe is a cache hit and builds nothing.
#
# The apt mirror is read at run time from the host's deb822 sources file
# (first URIs: of the stanza whose Suites: contains bookworm); no mirror name
# is stored in the repository. The image gets a copy of that host file.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
SOURCES="${NETLOCK_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}"
SUITE=bookworm
REPO=netlock-lab
PACKAGES=(
    systemd systemd-sysv dbus python3 python3-apt nftables iproute2 iputils-ping
    wireguard-go wireguard-tools tcpdump netcat-openbsd dnsmasq socat procps
    ca-certificates sudo openssh-client kmod openssh-server python3-venv git
    openvpn  # the OpenVPN client and server of the leak lab (ks-client4)
    iptables  # both variants, iptables-nft and iptables-legacy, for the leak lab's iptables clients
)
# Units that cannot work (or only add noise) inside a container.
MASK_UNITS=(
    getty.target console-getty.service getty@tty1.service
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
    systemd-udev-trigger.service systemd-udev-settle.service
    systemd-resolved.service systemd-timesyncd.service
    systemd-firstboot.service systemd-remount-fs.service
    systemd-modules-load.service systemd-sysctl.service
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount
    dev-hugepages.mount dev-mqueue.mount proc-sys-fs-binfmt_misc.automount
    systemd-binfmt.service
)
# Installed but started explicitly by the lab.
DISABLE_UNITS=(dnsmasq.service)
# Enabled at boot (the SSH fleet lab manages its hosts over real SSH).
ENABLE_UNITS=(ssh.service)

say() { echo "build-image: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, docker)"
[[ -r "$SOURCES" ]] || die "cannot read host apt sources $SOURCES"
command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"

# --- mirror from the host's deb822 sources ---------------------------------
# Prints "URI<TAB>SIGNED-BY" of the first stanza whose Suites: has $SUITE.
read_mirror() {
    awk -v suite="$SUITE" '
        function flush() {
            if (!found && uri != "" && hit) { print uri "\t" key; found = 1 }
            uri = ""; key = ""; hit = 0
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        tolower($1) == "uris:"      { uri = $2 }
        tolower($1) == "signed-by:" { key = $2 }
        tolower($1) == "suites:"    { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
        END { flush() }
    ' "$SOURCES"
}
IFS=$'\t' read -r MIRROR KEYRING < <(read_mirror) || true
[[ -n "${MIRROR:-}" ]] || die "no stanza with Suites: $SUITE and a URIs: entry in $SOURCES"

# --- recipe hash / cache ---------------------------------------------------
HASH="$(
    {
        cat "$SELF"
        echo "--- sources"
        cat "$SOURCES"
        echo "--- packages"
        printf '%s\n' "${PACKAGES[@]}"
    } | sha256sum | cut -c1-12
)"
REF="$REPO:$HASH"

"$HERE/docker-engine.sh" >&2 || die "no working docker engine"

# Serialise concurrent builds; a waiting build then sees the cache hit.
exec 9>/var/tmp/netlock-build-image.lock
flock -w 900 9 || die "another build holds /var/tmp/netlock-build-image.lock"

if [[ -z "${FORCE:-}" ]] && docker image inspect "$REF" >/dev/null 2>&1; then
    say "cache hit: $REF already exists (recipe unchanged)"
    docker tag "$REF" "$REPO:latest"
    echo "$REF"
    exit 0
fi

# --- build -----------------------------------------------------------------

START=$SECONDS
WORK="$(mktemp -d /var/tmp/netlock-image.XXXXXX)"
ROOTFS="$WORK/rootfs"
LOG=/var/tmp/netlock-build-image.log

unmount_rootfs() {
    # Lazy-unmount anything (proc, sys, dev, ...) still mounted below $ROOTFS,
    # deepest first, so nothing leaks and rm cannot descend into host trees.
    local mp
    awk -v r="$ROOTFS" '{ gsub(/\\040/, " ", $5); if ($5 == r || index($5, r "/") == 1) print $5 }' \
        /proc/self/mountinfo | sort -r | while read -r mp; do
        umount -l "$mp" 2>/dev/null || say "warning: could not unmount $mp"
    done
}
cleanup() {
    local rc=$?
    unmount_rootfs
    if grep -q " $WORK" /proc/self/mountinfo; then
        say "warning: mounts remain below $WORK; not deleting it"
    else
        rm -rf --one-file-system "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted; cleaning up $WORK"; exit 130' INT TERM

say "building $REF: debootstrap $SUITE (minbase) from $MIRROR into $WORK (log: $LOG)"
keyring_opt=()
[[ -n "${KEYRING:-}" && -f "$KEYRING" ]] && keyring_opt=(--keyring="$KEYRING")
include="$(IFS=,; echo "${PACKAGES[*]}")"
if ! debootstrap --variant=minbase --components=main "${keyring_opt[@]}" \
        --include="$include" "$SUITE" "$ROOTFS" "$MIRROR" >"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    die "debootstrap failed; see $LOG"
fi
unmount_rootfs
say "debootstrap done after $((SECONDS - START))s"

# apt sources: copy of the host's file, nothing else.
rm -f "$ROOTFS/etc/apt/sources.list"
install -m 0644 "$SOURCES" "$ROOTFS/etc/apt/sources.list.d/$(basename "$SOURCES")"
cat >"$ROOTFS/etc/apt/apt.conf.d/90netlock-lab" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF

# Containers get a fresh machine-id at boot; hostname/hosts/resolv.conf come from docker.
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id"

systemctl --root="$ROOTFS" mask "${MASK_UNITS[@]}" >/dev/null 2>&1 \
    || die "systemctl --root mask failed"
for u in "${DISABLE_UNITS[@]}"; do
    systemctl --root="$ROOTFS" disable "$u" >/dev/null 2>&1 || die "cannot disable $u"
done
for u in "${ENABLE_UNITS[@]}"; do
    systemctl --root="$ROOTFS" enable "$u" >/dev/null 2>&1 || die "cannot enable $u"
done
systemctl --root="$ROOTFS" set-default multi-user.target >/dev/null 2>&1

# No SSH host keys in the image: every container generates its own at first boot, so that
# known_hosts (ssh-keyscan) tells the hosts apart.
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
mkdir -p "$ROOTFS/etc/systemd/system/ssh.service.d"
cat >"$ROOTFS/etc/systemd/system/ssh.service.d/10-netlock-hostkeys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF

# Clean caches and logs.
rm -rf "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/var/cache/apt/archives/partial/* "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/log/*.log \
       "$ROOTFS"/var/log/apt/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*

say "importing rootfs as $REF"
# docker 20.10 (Debian docker.io) rejects STOPSIGNAL in `import --change`
# ("stopsignal is not a valid change command"), so import to a temporary tag
# and add STOPSIGNAL with a one-line, context-less legacy build (no registry).
tar --numeric-owner --one-file-system -C "$ROOTFS" -c . \
    | docker import \
        --change 'CMD ["/lib/systemd/systemd"]' \
        --change 'ENV container=docker' \
        --message "netlock-lab recipe $HASH" \
        - "$REF-rootfs" >/dev/null
printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$REF-rootfs" \
    | DOCKER_BUILDKIT=0 docker build -q -t "$REF" - >/dev/null 2>"$WORK/build.err" \
    || { cat "$WORK/build.err" >&2; die "docker build (STOPSIGNAL layer) failed"; }
docker rmi "$REF-rootfs" >/dev/null   # only drops the tag; the layer is shared
docker tag "$REF" "$REPO:latest"
say "built $REF (+ $REPO:latest) in $((SECONDS - START))s"
echo "$REF"
