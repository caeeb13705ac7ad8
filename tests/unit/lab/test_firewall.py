"""The leak lab's clients and their firewalls: inventory, topology and molecule agree; the variant and
rule checks of lab/firewall.py; the lock that lets clients run side by side."""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lab import firewall  # noqa: E402
from lab.firewall import Firewall  # noqa: E402
from lab.probe import Capture  # noqa: E402
from lab.run import SharedExclusiveLock  # noqa: E402
from lab.topology import CLIENTS, HOSTS, OPENVPN_SERVERS, TUNNEL_V4, TUNNEL_V6  # noqa: E402

LAB_INVENTORY = REPO_ROOT / "inventories" / "lab"


# --- one lab, described the same way everywhere ---------------------------------------------------------

def test_clients_are_the_same_in_topology_inventory_and_molecule() -> None:
    names = [c.name for c in CLIENTS]
    hosts = yaml.safe_load((LAB_INVENTORY / "hosts.yml").read_text())["all"]["children"]["lab_clients"]["hosts"]
    platforms = yaml.safe_load((REPO_ROOT / "molecule" / "leak" / "molecule.yml").read_text())["platforms"]
    assert names == ["ks-client1", "ks-client2", "ks-client3", "ks-client4"]
    assert list(hosts) == names
    assert [p["name"] for p in platforms] == names
    assert sorted(p.stem for p in (LAB_INVENTORY / "host_vars").glob("*.yml")) == names


def test_one_client_per_linux_firewall() -> None:
    assert [firewall.intended(c) for c in CLIENTS] == [Firewall("nftables", "iptables-nft"),
                                                       Firewall("iptables", "iptables-nft"),
                                                       Firewall("iptables", "iptables-legacy"),
                                                       Firewall("nftables", "iptables-nft")]  # ks-client4: OpenVPN


def test_lab_addresses_stay_in_the_documentation_ranges() -> None:
    lab_v4, lab_v6 = ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32")
    addresses = [a for h in HOSTS for pair in h.addresses.values() for a in pair] + [a for h in HOSTS for a in h.tunnel]
    addresses += [TUNNEL_V4, TUNNEL_V6] + [a for vpn in OPENVPN_SERVERS for a in (vpn.gateway, vpn.tunnel_v4, vpn.tunnel_v6)]
    for address in addresses:
        network = ipaddress.ip_network(address)
        assert network.subnet_of(lab_v4 if network.version == 4 else lab_v6), address
    assert len(set(addresses)) == len(addresses)


@pytest.mark.parametrize("document, message", [
    ({"lab_iptables_alternative": "iptables-nft"}, "killswitch_backend must be one of nftables, iptables"),
    ({"killswitch_backend": "auto", "lab_iptables_alternative": "iptables-nft"}, "not 'auto'"),
    ({"killswitch_backend": "iptables"}, "lab_iptables_alternative must be one of"),
    ({"killswitch_backend": "iptables", "lab_iptables_alternative": "nft"}, "not 'nft'"),
])
def test_a_client_names_its_backend_and_variant(document, message) -> None:
    with pytest.raises(ValueError, match=message):
        firewall.parse_host_vars("ks-client9", document)


# --- the iptables variant -------------------------------------------------------------------------------

def test_select_script_sets_both_families_and_records_the_choice() -> None:
    script = firewall.select_script(Firewall("iptables", "iptables-legacy"))
    assert "update-alternatives --quiet --set iptables /usr/sbin/iptables-legacy\n" in script
    assert "update-alternatives --quiet --set ip6tables /usr/sbin/ip6tables-legacy\n" in script
    assert script.endswith("printf '%s\\n' iptables-legacy > /etc/netlock-lab/iptables-alternative\n")
    assert "/usr/sbin/ip6tables-nft" in firewall.select_script(Firewall("nftables", "iptables-nft"))


def versions(variant: str) -> dict:
    return {tool: "%s v1.8.9 (%s)" % (tool, variant) for tool in firewall.VERSIONED_TOOLS}


def test_the_intended_variant_passes() -> None:
    legacy = Firewall("iptables", "iptables-legacy")
    assert firewall.variant_problems(legacy, versions("legacy"), "iptables-legacy") == []
    nft = Firewall("iptables", "iptables-nft")
    assert firewall.variant_problems(nft, versions("nf_tables"), "iptables-nft") == []


def test_another_variant_fails() -> None:
    legacy = Firewall("iptables", "iptables-legacy")
    problems = firewall.variant_problems(legacy, versions("nf_tables"), "iptables-legacy")
    assert len(problems) == len(firewall.VERSIONED_TOOLS)
    assert problems[0] == ("iptables -V says 'iptables v1.8.9 (nf_tables)' inside the container, iptables-legacy "
                           "intended (legacy)")
    # One tool of six pointing elsewhere (ip6tables-restore left on nft) is enough.
    mixed = dict(versions("legacy"), **{"ip6tables-restore": "ip6tables-restore v1.8.9 (nf_tables)"})
    assert [p.split(" ", 1)[0] for p in firewall.variant_problems(legacy, mixed, "iptables-legacy")] == [
        "ip6tables-restore"]
    assert firewall.variant_problems(legacy, {}, "iptables-legacy")[0].startswith("iptables -V says 'nothing'")


def test_a_lab_built_for_another_variant_fails() -> None:
    nft = Firewall("iptables", "iptables-nft")
    assert firewall.variant_problems(nft, versions("nf_tables"), "iptables-legacy") == [
        "the lab recorded 'iptables-legacy' in /etc/netlock-lab/iptables-alternative, iptables-nft intended"]


# --- rules in force ---------------------------------------------------------------------------------------

SAVED = """# Generated by iptables-save v1.8.9 (nf_tables) on Mon Nov 23 22:11:01 2026
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:DOCKER_OUTPUT - [0:0]
-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT
COMMIT
# Completed on Mon Nov 23 22:11:01 2026
*filter
:INPUT DROP [10:840]
:FORWARD DROP [0:0]
:OUTPUT DROP [5:300]
:KILLSWITCH-OUTPUT - [0:0]
-A OUTPUT -j KILLSWITCH-OUTPUT
-A KILLSWITCH-OUTPUT -o wg0 -j ACCEPT
COMMIT
"""
EMPTY = """*nat
:OUTPUT ACCEPT [3:180]
-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT
COMMIT
*filter
:INPUT ACCEPT [12:900]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""


def test_xtables_rules_are_the_filtering_tables_without_counters() -> None:
    assert firewall.xtables_rules(SAVED) == "\n".join([
        "*filter", ":INPUT DROP", ":FORWARD DROP", ":OUTPUT DROP", ":KILLSWITCH-OUTPUT -",
        "-A OUTPUT -j KILLSWITCH-OUTPUT", "-A KILLSWITCH-OUTPUT -o wg0 -j ACCEPT", "COMMIT"])
    assert firewall.xtables_rules(SAVED.replace("[10:840]", "[99:9999]")) == firewall.xtables_rules(SAVED)


def test_tables_that_let_everything_through_hold_no_kill_switch() -> None:
    assert firewall.xtables_rules(EMPTY) == ""  # Docker's nat rules are not a kill switch
    assert firewall.xtables_rules("") == ""
    assert firewall.xtables_rules(EMPTY.replace(":OUTPUT ACCEPT [0:0]", ":OUTPUT DROP [0:0]")) != ""


def test_reset_payload_empties_the_filtering_tables_only() -> None:
    assert firewall.reset_payload(SAVED) == "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n" \
                                            ":OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    assert firewall.reset_payload("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n") == ""


# --- the lab's capture and its clients side by side --------------------------------------------------------

def test_capture_sources_are_those_of_the_marked_packets() -> None:
    capture = Capture("ks-sink", "")
    capture.lines = [
        "1700000000.000001 IP 198.18.2.10.40000 > 198.18.2.20.8080: Flags [S], length 0",
        "1700000000.000002 IP 198.18.1.12.40001 > 198.18.2.20.8080: Flags [P.], length 26",
        "E..NETLOCK-bbbb.....",
        "1700000000.000003 IP 198.18.2.10.40000 > 198.18.2.20.8080: Flags [P.], length 26",
        "E..NETLOCK-aaaa.....",
        "1700000000.000004 IP6 2001:db8:2::10.40002 > 2001:db8:2::20.8080: Flags [P.], length 26",
        "`...NETLOCK-aaaa....",
    ]
    assert capture.sources("NETLOCK-aaaa") == {"198.18.2.10", "2001:db8:2::10"}
    assert capture.sources("NETLOCK-bbbb") == {"198.18.1.12"}
    assert capture.sources("NETLOCK-cccc") == set()


def test_an_exclusive_holder_waits_for_the_shared_ones_and_goes_first() -> None:
    lock, order = SharedExclusiveLock(), []
    shared_in = threading.Event()

    def shared(name: str, hold: float, entered: threading.Event = None) -> None:
        with lock.shared():
            order.append(name + " in")
            if entered:
                entered.set()
            time.sleep(hold)
            order.append(name + " out")

    def exclusive() -> None:
        with lock.exclusive():
            order.append("exclusive in")
            time.sleep(0.05)
            order.append("exclusive out")

    first = threading.Thread(target=shared, args=("first", 0.3, shared_in))
    first.start()
    shared_in.wait(5)
    waiting = threading.Thread(target=exclusive)
    waiting.start()
    time.sleep(0.05)
    late = threading.Thread(target=shared, args=("late", 0))  # arrives while the exclusive holder waits
    late.start()
    for thread in (first, waiting, late):
        thread.join(5)
    assert order == ["first in", "first out", "exclusive in", "exclusive out", "late in", "late out"]


def test_shared_holders_overlap() -> None:
    lock, inside, most = SharedExclusiveLock(), [0], [0]
    guard = threading.Lock()

    def shared() -> None:
        with lock.shared():
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.1)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=shared) for _index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert most[0] == 3
