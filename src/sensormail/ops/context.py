"""The fleet of the running pyinfra inventory, and its credentials.

Built once per run (deploy.py is executed once per host) from every host of
the inventory, not only those a `--limit` selects, so nothing depends on
which hosts a run touches.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gevent.lock import Semaphore
from pyinfra import inventory, state

from .. import inventory as inventory_adapter
from ..fleet import Fleet, FleetError, build_fleet
from ..store import Credentials, PendingChanges, Store, StoreError, default_dir

__all__ = ["fleet_and_credentials"]

_cache: dict[int, tuple[Fleet, Credentials]] = {}
_failed: dict[int, Exception] = {}
# pyinfra loads deploy.py for every host in parallel greenlets: while one syncs
# (and yields, on the store lock or a fork), the others must wait for its result,
# not sync (and rotate) again.
_guard = Semaphore()


def fleet_and_credentials() -> tuple[Fleet, Credentials]:
    """Validate the inventory and sync the store, once per run; raise FleetError/StoreError.

    New credentials (first run, renewal, rotation) are written only when every
    host receiving them, and the gateway that must know them, is in this run:
    otherwise a `--limit` run would leave part of the fleet locked out.
    """
    with _guard:
        return _once()


def _once() -> tuple[Fleet, Credentials]:
    key = id(inventory._get_module())  # one inventory per pyinfra run
    if key in _failed:
        raise _failed[key]  # deploy.py runs once per host: decide once
    if key in _cache:
        return _cache[key]
    try:
        _cache[key] = _prepare()
    except (FleetError, StoreError) as exc:
        _failed[key] = exc
        raise
    return _cache[key]


def _prepare() -> tuple[Fleet, Credentials]:
    fleet, creds = _synced()
    # Every bundle this run pushes is read and checked against the registry now,
    # so a damaged or swapped one stops the run before any operation exists.
    for host in inventory.iter_activated_hosts():
        if host.name in creds.hosts and not creds[host.name].revoked:
            creds[host.name].verify()
    return fleet, creds


def _synced() -> tuple[Fleet, Credentials]:
    hosts = list(inventory)
    fleet = build_fleet(inventory_adapter.entries(hosts))
    rotate = inventory_adapter.rotation(h.data.dict() for h in hosts)
    # The store belongs to the project of the deploy file, wherever pyinfra runs from.
    deploy_file = state.current_deploy_filename or state.current_exec_filename
    store = Store(default_dir(Path(deploy_file).parent if deploy_file else None))
    try:
        creds = store.sync(fleet, rotate=rotate, dry_run=True)
    except PendingChanges as pending:
        active = {h.name for h in inventory.iter_activated_hosts()}
        left_out = (pending.hosts | {fleet.gateway.name}) - active
        if left_out:
            raise StoreError(
                f"new credentials are due for {_names(pending.hosts)}; they and the gateway "
                f"must all be part of this run, but {_names(left_out)} "
                f"{'is' if len(left_out) == 1 else 'are'} not (drop --limit, or include them)"
            ) from None
        if "--dry" in sys.argv:  # pyinfra runs deploy files the same way for a dry run
            # Show what the deploy would push, with keys made for the preview only.
            return fleet, store.preview(fleet, rotate=rotate)
        creds = store.sync(fleet, rotate=rotate)
    return fleet, creds


def _names(hosts: frozenset[str] | set[str], most: int = 5) -> str:
    names = sorted(hosts)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more
