"""Facts the deploy steps read from a host."""

from __future__ import annotations

from collections.abc import Iterable

from pyinfra.api import FactBase

__all__ = ["WireGuardInKernel"]


class WireGuardInKernel(FactBase):
    """True when the kernel has WireGuard, built in or as a loadable module."""

    def command(self) -> str:
        return (
            "if [ -d /sys/module/wireguard ] || modprobe -nq wireguard 2>/dev/null; "
            "then echo yes; else echo no; fi"
        )

    def process(self, output: Iterable[str]) -> bool:
        return list(output)[:1] == ["yes"]
