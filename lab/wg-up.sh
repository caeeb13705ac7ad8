#!/bin/sh
# Bring up a userspace WireGuard interface wg0 for the lab (no kernel module here).
#   wg-up.sh server ADDR/LEN TUNNEL_NET
#   wg-up.sh client ADDR/LEN ALLOWED_IPS SERVER_PUBKEY ENDPOINT FWMARK
set -eu
role=$1 address=$2 allowed=$3
dir=/run/netlock-wg
mkdir -p "$dir" && chmod 700 "$dir"
[ -f "$dir/wg0.key" ] || wg genkey > "$dir/wg0.key"
if ! ip link show wg0 >/dev/null 2>&1; then
  systemd-run --unit=lab-wg0 --property=Restart=on-failure \
    --setenv=WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go -f wg0
  i=0; until ip link show wg0 >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 50 ] || exit 1; sleep 0.1; done
fi
if [ "$role" = server ]; then
  wg set wg0 private-key "$dir/wg0.key" listen-port 51820
else
  wg set wg0 private-key "$dir/wg0.key" fwmark "$6" \
    peer "$4" endpoint "$5" allowed-ips "$allowed" persistent-keepalive 1
fi
ip address replace "$address" dev wg0
ip link set wg0 up
wg pubkey < "$dir/wg0.key" > "$dir/wg0.pub"
