"""WireGuard: the tunnel every sensor keeps to the gateway (wg-quick@sensormail)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server, systemd

from ..render import WG_INTERFACE
from . import packages as packages_op
from .facts import WireGuardInKernel

__all__ = ["activate", "install", "packages"]

UNIT = f"wg-quick@{WG_INTERFACE}"


def packages() -> list[str]:
    # wg-quick falls back to wireguard-go by itself when the kernel lacks WireGuard.
    userspace = [] if host.get_fact(WireGuardInKernel) else ["wireguard-go"]
    return ["wireguard-tools", *userspace]


def install() -> None:
    packages_op.install("Install WireGuard", packages())


def activate(conf: OperationMeta) -> None:
    """Bring the tunnel up; apply peer changes without dropping it."""
    systemd.service(
        name=f"Enable and start {UNIT}",
        service=f"{UNIT}.service",
        running=True,
        enabled=True,
    )
    server.shell(
        name=f"Apply the changed {WG_INTERFACE} peers (wg syncconf)",
        commands=[f"bash -c 'wg syncconf {WG_INTERFACE} <(wg-quick strip {WG_INTERFACE})'"],
        _if=conf.did_change,
    )
