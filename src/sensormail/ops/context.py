"""The fleet of the running pyinfra inventory, and its credentials.

Built once per run (deploy.py is executed once per host) from every host of
the inventory, not only those a `--limit` selects, so nothing depends on
which hosts a run touches.
"""

from __future__ import annotations

from pyinfra import inventory

from ..fleet import Fleet, HostEntry, build_fleet
from ..store import Credentials, Store

__all__ = ["fleet_and_credentials", "inventory_fleet"]

_cache: dict[int, tuple[Fleet, Credentials]] = {}


def _entries() -> list[HostEntry]:
    entries = []
    for host in inventory:
        data = host.data.dict()
        entries.append(
            HostEntry(
                name=host.name,
                groups=frozenset(host.groups),
                data=data,
                address=data.get("ssh_hostname"),
            )
        )
    return entries


def inventory_fleet() -> Fleet:
    """The validated fleet; raises FleetError naming host and field."""
    return build_fleet(_entries())


def fleet_and_credentials() -> tuple[Fleet, Credentials]:
    key = id(inventory._get_module())  # one inventory per pyinfra run
    if key not in _cache:
        fleet = inventory_fleet()
        _cache[key] = (fleet, Store().sync(fleet))
    return _cache[key]
