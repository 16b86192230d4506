"""The fleet of the running pyinfra inventory, and its credentials.

Built once per run (deploy.py is executed once per host) from every host of
the inventory, not only those a `--limit` selects, so nothing depends on
which hosts a run touches.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyinfra import inventory, state

from .. import inventory as inventory_adapter
from ..fleet import Fleet, build_fleet
from ..store import Credentials, Store, StoreError, default_dir

__all__ = ["fleet_and_credentials"]

_cache: dict[int, tuple[Fleet, Credentials]] = {}


def fleet_and_credentials() -> tuple[Fleet, Credentials]:
    """Validate the inventory and sync the store, once per run; raise FleetError/StoreError."""
    key = id(inventory._get_module())  # one inventory per pyinfra run
    if key not in _cache:
        hosts = list(inventory)
        fleet = build_fleet(inventory_adapter.entries(hosts))
        rotate = inventory_adapter.rotation(h.data.dict() for h in hosts)
        active = {h.name for h in inventory.iter_activated_hosts()}
        if rotate and fleet.gateway.name not in active:
            # New keys the gateway does not know would lock the sensors out.
            raise StoreError(
                f"rotate: the gateway {fleet.gateway.name!r} must be part of a run that "
                "rotates keys (drop --limit or include it)"
            )
        # The store belongs to the project of the deploy file, wherever pyinfra runs from.
        deploy_file = state.current_deploy_filename or state.current_exec_filename
        store = Store(default_dir(Path(deploy_file).parent if deploy_file else None))
        dry = "--dry" in sys.argv  # pyinfra runs deploy files the same way for a dry run
        _cache[key] = (fleet, store.sync(fleet, rotate=rotate, dry_run=dry))
    return _cache[key]
