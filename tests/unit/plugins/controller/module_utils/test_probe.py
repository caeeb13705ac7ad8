# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""killswitch_verify's probes for real, as root, each run in a throwaway network namespace.

The namespace has an uplink ``up0`` (IPv4 and IPv6 addresses and default routes) and a stand-in tunnel ``wg0``
(veth pairs into a second, silent namespace: a packet that gets past the firewall goes no further), and its own
sysfs, so /sys/class/net lists them.  The ruleset is the one the project's renderer makes
from a policy, loaded with nft (or the iptables payload with iptables-nft and iptables-legacy); ``verify()`` runs
inside the namespace with the real prober and real nft, only ``systemctl`` is scripted.

The tests: with the kill switch every probe outside the tunnel is refused and the verify passes; with the table
deleted it fails naming each open interface, family and protocol; through the tunnel the probes pass (the
positive control), and a rule that refuses them there makes the verify fail; a firewall that only drops (no
reject) is still judged right for TCP, by the raw SYN.  Each probe waits at most ``TIMEOUT`` seconds.
Under CI=true nothing here may skip.

Here, not under tests/unit/plugins/module_utils (ansible-test's module_utils context, where controller code cannot
be imported), because its policy is the one the controller's killswitch_policy action returns (``_plain`` of the
parsed policy) and its rulesets come from the controller's renderers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ansible_collections.netlock.killswitch.plugins.action.killswitch_policy import _plain
from ansible_collections.netlock.killswitch.plugins.plugin_utils.backends import render_for
from ansible_collections.netlock.killswitch.plugins.plugin_utils.policy import parse_policy

COLLECTIONS = Path(__file__).resolve().parents[5] / ".collections"
TIMEOUT = 0.3
UPLINK = ["up0 IPv4 TCP to 198.51.100.1:443", "up0 IPv4 UDP to 198.51.100.1:443", "up0 IPv4 ICMP echo to 198.51.100.1",
          "up0 IPv4 DNS query to 198.51.100.1:53", "up0 IPv6 TCP to [2001:db8:ffff::1]:443",
          "up0 IPv6 UDP to [2001:db8:ffff::1]:443", "up0 IPv6 ICMP echo to 2001:db8:ffff::1",
          "up0 IPv6 DNS query to [2001:db8:ffff::1]:53"]
VARIABLES = dict(killswitch_tunnel_interfaces=["wg0"], killswitch_endpoints=[{"address": "192.0.2.50", "port": 51820}],
                 killswitch_management_cidrs=["192.0.2.1/32"], killswitch_ipv6="tunnel",
                 killswitch_dns_servers=["10.99.0.53", "fd99::53"])

# Interfaces and routes; the probe addresses' IPv6 prefix is routed into the tunnel too, as a VPN client would.
# Both are veth pairs whose far ends live in a second namespace (so they are not interfaces here), which goes when
# its process ends; nothing there answers, and nothing ever leaves the two namespaces.
SETUP = r"""
set -e
mount -t sysfs sysfs /sys
ip link set lo up
unshare --net -- sleep 120 &
far=$!
trap 'kill $far' EXIT
here=$(readlink /proc/self/ns/net)
while [ "$(readlink /proc/$far/ns/net)" = "$here" ]; do sleep 0.01; done
for dev in up0 wg0; do
    ip link add $dev type veth peer name ${dev}p netns $far
    nsenter --net=/proc/$far/ns/net ip link set ${dev}p up
    ip link set $dev up
done
ip addr add 192.0.2.2/24 dev up0
ip -6 addr add 2001:db8:1::2/64 dev up0 nodad
ip route add default via 192.0.2.1 dev up0
ip -6 route add default via 2001:db8:1::1 dev up0
ip addr add 10.99.0.2/16 dev wg0
ip -6 addr add fd99::2/64 dev wg0 nodad
ip -6 route add 2001:db8:ffff::/48 dev wg0
"""

# verify() with the real prober and nft; systemctl answers enabled and active (there is no systemd here).
VERIFY = r"""
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.netlock.killswitch.plugins.module_utils import probe, verify

def run(argv):
    if argv[0] == "systemctl":
        return 0, "enabled\n" if argv[1] == "is-enabled" else "active\n", ""
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr

args = json.loads(sys.argv[2])
prober = probe.Prober(args.pop("timeout"))
print("RESULT " + json.dumps(verify.verify(run, prober, systemctl="systemctl", **args)))
"""


@pytest.fixture(scope="module", name="root_netns")
def root_netns_fixture(netns_reason, unshare_binary):
    """conftest's netns checks (under CI=true the skip is a failure: tests/unit/strict_ci.py)."""
    if netns_reason:
        pytest.skip(netns_reason)
    return unshare_binary


def rendered(backend="nftables", **variables):
    """(policy as killswitch_policy returns it, payload) for the test policy with these role variables changed."""
    policy = parse_policy(dict(VARIABLES, **{"killswitch_" + k: v for k, v in variables.items()}), resolve=lambda n: [])
    return _plain(policy.data()), render_for(policy, backend)


def verify_in_netns(tmp_path, script, policy, path=None, **kwargs):
    """Run SETUP, then ``script`` (shell: load, delete...), then verify(); returns its result."""
    (tmp_path / "verify.py").write_text(VERIFY)
    args = dict(policy=policy, nft=kwargs.pop("nft", "nft"), fence_nft="nft", fence="off", timeout=TIMEOUT, **kwargs)
    env = dict(os.environ, PY=sys.executable, COLLECTIONS=str(COLLECTIONS), ARGS=json.dumps(args))
    if path:
        env["PATH"] = path
    shell = SETUP + textwrap.dedent(script) + '\n"$PY" verify.py "$COLLECTIONS" "$ARGS"\n'
    proc = subprocess.run(["unshare", "--net", "--mount", "--", "sh", "-c", shell], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0 and "veth" in proc.stderr:
        pytest.skip("cannot create veth interfaces here: %s" % proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def load_nft(tmp_path, payload):
    (tmp_path / "ruleset.nft").write_text(payload)
    return "nft -f ruleset.nft\n"


def probes_on(result, interface):
    return {"%s IPv%d %s" % (p["interface"], p["family"], p["protocol"]): p for p in result["probes"]
            if p["interface"] == interface}


@pytest.mark.usefixtures("root_netns")
def test_with_the_kill_switch_the_verify_passes(tmp_path):
    policy, payload = rendered()
    result = verify_in_netns(tmp_path, load_nft(tmp_path, payload), policy)
    assert result["ok"] is True, result["msg"]
    assert result["open_paths"] == []
    uplink = {c["name"]: c for c in result["checks"] if c["name"].startswith("up0 ")}
    assert sorted(uplink) == sorted(UPLINK)
    for name, check in uplink.items():
        assert check["ok"] and check["detail"].startswith("refused by the local firewall: "), check
        assert ("SYN's sendto() got EPERM; connect() got ECONNREFUSED" if " TCP " in name
                else "sendto() got EPERM") in check["detail"], check
    assert result["table"] == dict(present=True, digest=result["digest"], matches=True)


@pytest.mark.usefixtures("root_netns")
def test_without_the_table_the_verify_fails_naming_every_open_path(tmp_path):
    """The verify can fail: the same namespace and probes, the table deleted after it was loaded."""
    policy, payload = rendered()
    result = verify_in_netns(tmp_path, load_nft(tmp_path, payload) + "nft delete table inet killswitch\n", policy)
    assert result["ok"] is False
    assert sorted(p["path"] for p in result["open_paths"]) == sorted(UPLINK)
    assert {(p["interface"], p["family"], p["protocol"], p["outcome"]) for p in result["open_paths"]} == {
        ("up0", family, protocol, "sent") for family in (4, 6) for protocol in ("tcp", "udp", "icmp", "dns")}
    assert result["msg"].startswith("table inet killswitch is not loaded; ")
    assert "up0 IPv4 UDP to 198.51.100.1:443 was sent: the kill switch does not block it (sendto() succeeded)" \
        in result["msg"]
    assert "up0 IPv6 TCP to [2001:db8:ffff::1]:443 was sent: the kill switch does not block it (a SYN's sendto() " \
           "succeeded)" in result["msg"]


@pytest.mark.usefixtures("root_netns")
def test_the_probes_through_the_tunnel_pass_the_firewall(tmp_path):
    """The positive control: the same probes bound to wg0 are not refused, DNS going to the policy's resolver."""
    policy, payload = rendered()
    result = verify_in_netns(tmp_path, load_nft(tmp_path, payload), policy)
    tunnel = probes_on(result, "wg0")
    assert sorted(tunnel) == sorted("wg0 IPv%d %s" % (f, p) for f in (4, 6) for p in ("tcp", "udp", "icmp", "dns"))
    for probe in tunnel.values():
        assert (probe["expected"], probe["outcome"], probe["ok"]) == ("passes", "sent", True), probe
    assert tunnel["wg0 IPv4 dns"]["target"] == "10.99.0.53" and tunnel["wg0 IPv6 dns"]["target"] == "fd99::53"


@pytest.mark.usefixtures("root_netns")
def test_a_tunnel_the_firewall_refuses_fails_the_control(tmp_path):
    """The control can fail: another table rejects everything through wg0."""
    policy, payload = rendered()
    script = load_nft(tmp_path, payload) + textwrap.dedent("""\
        nft add table inet other
        nft add chain inet other output '{ type filter hook output priority 0; policy accept; }'
        nft add rule inet other output oifname wg0 reject
        """)
    result = verify_in_netns(tmp_path, script, policy)
    assert result["ok"] is False and result["open_paths"] == []
    assert "wg0 IPv4 UDP to 198.51.100.1:443 was refused by the local firewall (sendto() got EPERM), but the policy " \
           "lets it through the tunnel" in result["msg"]


@pytest.mark.usefixtures("root_netns")
def test_ipv6_block_refuses_ipv6_through_the_tunnel_too(tmp_path):
    policy, payload = rendered(ipv6="block", dns_servers=["10.99.0.53"])
    result = verify_in_netns(tmp_path, load_nft(tmp_path, payload), policy)
    assert result["ok"] is True, result["msg"]
    tunnel = probes_on(result, "wg0")
    for name, probe in tunnel.items():
        expected = "passes" if " IPv4 " in name else "refused"
        assert (probe["expected"], probe["outcome"]) == (expected, "sent" if expected == "passes" else "refused"), probe


@pytest.mark.usefixtures("root_netns")
def test_a_firewall_that_only_drops_is_judged_by_the_raw_syn(tmp_path):
    """Under a plain drop a TCP connect just times out, as it would if the SYN had left: the raw SYN's EPERM tells."""
    policy, _payload = rendered()
    script = textwrap.dedent("""\
        nft add table inet drops
        nft add chain inet drops output '{ type filter hook output priority 0; policy drop; }'
        nft add rule inet drops output oifname '{ lo, wg0 }' accept
        """)
    result = verify_in_netns(tmp_path, script, policy)
    uplink = probes_on(result, "up0")
    assert {p["outcome"] for p in uplink.values()} == {"refused"}
    for family in (4, 6):
        assert uplink["up0 IPv%d tcp" % family]["detail"] == (
            "a SYN's sendto() got EPERM; connect() had no answer within %.1f s" % TIMEOUT)
    assert result["open_paths"] == []


@pytest.fixture(name="iptables_variant_path")
def iptables_variant_path_fixture(iptables_path, request):
    return iptables_path(request.param)


@pytest.mark.usefixtures("root_netns")
@pytest.mark.parametrize("iptables_variant_path", ["nft", "legacy"], indirect=True)
def test_iptables_backend_passes_then_fails_when_removed(tmp_path, iptables_variant_path):
    policy, payload = rendered(backend="iptables")
    (tmp_path / "ruleset.sh").write_text(payload)
    save = "iptables-save"
    result = verify_in_netns(tmp_path, "sh ruleset.sh load\n", policy, path=iptables_variant_path, nft=save,
                             backend="iptables")
    assert result["ok"] is True, result["msg"]
    assert result["checks"][0]["detail"].startswith("iptables chain killswitch-out is loaded with policy digest")
    removed = verify_in_netns(tmp_path, "sh ruleset.sh load\nsh ruleset.sh delete\n", policy,
                              path=iptables_variant_path, nft=save, backend="iptables")
    assert removed["ok"] is False
    assert sorted(p["path"] for p in removed["open_paths"]) == sorted(UPLINK)
    assert "iptables chain killswitch-out is not loaded" in removed["msg"]
