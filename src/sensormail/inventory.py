"""pyinfra inventories as fleet entries, for the deploy steps and the CLI alike.

Both read an inventory the same way (groups, group_data, host data), so
`sensormail pki sync -i INVENTORY` does to the store exactly what a deploy does.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .fleet import HostEntry

__all__ = ["entries", "load", "rotation"]


def entries(hosts: Iterable[Any]) -> list[HostEntry]:
    """Fleet entries from pyinfra Host objects (every host, whatever --limit says)."""
    result = []
    for host in hosts:
        data = host.data.dict()
        result.append(
            HostEntry(
                name=host.name,
                groups=frozenset(host.groups),
                data=data,
                address=data.get("ssh_hostname"),
            )
        )
    return result


def rotation(hosts: Iterable[Any]) -> frozenset[str]:
    """Hosts named by `--data rotate=NAME[,NAME…]` (or "all")."""
    names: set[str] = set()
    for host in hosts:
        value = host.data.get("rotate")
        if value:
            names |= {n.strip() for n in str(value).split(",") if n.strip()}
    return frozenset(names)


def load(path: Path, override_data: dict[str, Any] | None = None) -> list[Any]:
    """Load an inventory file the way the pyinfra CLI does; return its hosts."""
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_config, ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    # The pyinfra CLI's own sequence: a state, then the inventory, then bind them.
    state = State()
    state.cwd = str(Path.cwd())
    config = Config()
    with ctx_state.use(state), ctx_config.use(config):
        inventory = make_inventory(str(path), cwd=state.cwd, override_data=override_data or {})
        with ctx_inventory.use(inventory):
            state.init(inventory, config)
            return list(inventory)
