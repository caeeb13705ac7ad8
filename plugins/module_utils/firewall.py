# -*- coding: utf-8 -*-
# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The interface every host-side applier implements (``Nft``, ``Iptables``), and the factory the modules use.

A payload is the file the controller rendered for the host's backend; it is persisted under /etc and
loaded at boot, by the guard and by the rollback with ``load_argv``.  ``live`` and ``desired`` return a
(comparable, text) pair: the text is the kernel's own listing without counter values, which is what the
guard records and compares (``list_command``).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

# (rc, stdout, stderr) of a command, as AnsibleModule.run_command returns it.
Runner = Callable[[Sequence[str]], Tuple[int, str, str]]
Listing = Tuple[Any, str]


class Rejected(RuntimeError):
    """The firewall refused the payload itself (what its check would have said)."""


class Firewall:
    """One backend's applier on the host."""

    name = ""
    # True when ``desired`` loads the payload as ``apply`` would and raises Rejected if the firewall refuses it:
    # then ``check`` adds nothing and the module skips it (one pass over the payload fewer).
    desired_checks = False

    def __init__(self, run: Runner, unshare: str = "unshare"):
        self.run = run  # runs an argv, returns (rc, stdout, stderr)
        self.unshare = unshare  # for the throwaway network namespace of ``desired``

    def check(self, path: str) -> Optional[str]:
        """Validate a payload without changing anything: None, or the firewall's error text."""
        raise NotImplementedError

    def desired(self, path: str, table: str) -> Listing:
        """Load the payload in a throwaway network namespace and list what the kernel made of it."""
        raise NotImplementedError

    def live(self, table: str) -> Optional[Listing]:
        """What the kernel holds now, or None when the kill switch is not loaded."""
        raise NotImplementedError

    def apply(self, path: str) -> Optional[str]:
        """Load the payload atomically (per table): None, or the error text with the previous rules kept."""
        raise NotImplementedError

    def delete(self, table: str) -> Optional[str]:
        """Remove everything the kill switch loaded: None, or the error text."""
        raise NotImplementedError

    def load_argv(self, path: str) -> List[str]:
        """The command that loads a payload (boot unit, guard, staged apply, rollback)."""
        raise NotImplementedError

    def list_command(self, table: str) -> str:
        """Shell that prints the live listing ``live`` compares (the guard runs it)."""
        raise NotImplementedError

    def listing(self, table: str) -> str:
        """The live rules as ``list_command`` prints them, the text the guard compares with the expected listing
        (empty when nothing is loaded)."""
        rc, out, err = self.run(["/bin/sh", "-c", self.list_command(table)])
        if rc != 0:
            raise RuntimeError("listing the live %s rules failed: %s" % (self.name, (err or out).strip()))
        return out

    def previous_payload(self, table: str, live: Optional[Listing]) -> str:
        """A payload that restores ``live`` exactly, or removes the kill switch when ``live`` is None."""
        raise NotImplementedError
