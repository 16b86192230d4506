"""pyinfra inventories as fleet entries, for the deploy steps and the CLI alike.

The deploy reads pyinfra's own Host objects (`entries`). The CLI reads the
inventory file itself (`read`) with pyinfra's rules for inventory files:
module-level groups, `group_data/` next to the working directory and the
inventory, and the same precedence (override > host > groups, later group
wins > all). It does not build pyinfra's Inventory: that takes seconds per
thousand hosts. A test holds both readers to the same result.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .fleet import HostEntry

__all__ = ["entries", "read", "rotation"]


def entries(hosts: Iterable[Any]) -> list[HostEntry]:
    """Fleet entries from pyinfra Host objects (every host, whatever --limit says)."""
    return [
        HostEntry(
            name=host.name,
            groups=frozenset(host.groups),
            data=(data := host.data.dict()),
            address=data.get("ssh_hostname"),
        )
        for host in hosts
    ]


def rotation(datas: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Hosts named by `--data rotate=NAME[,NAME…]` (or "all") in any host's data."""
    names: set[str] = set()
    for data in datas:
        value = data.get("rotate")
        if value:
            names |= {n.strip() for n in str(value).split(",") if n.strip()}
    return frozenset(names)


def _exec(path: Path) -> dict[str, Any]:
    code = compile(path.read_text(), str(path), "exec")
    scope: dict[str, Any] = {"__file__": str(path), "__name__": path.stem}
    exec(code, scope)  # an inventory is Python, as pyinfra runs it
    return scope


def _group(key: str, value: Any) -> tuple[list[Any], dict[str, Any]] | None:
    """(hosts, data) when a module-level name is an inventory group, as pyinfra reads it."""
    if key.startswith("_"):
        return None
    hosts, data = value, {}
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        hosts, data = value
    if not isinstance(hosts, list | tuple) or not all(isinstance(h, str | tuple) for h in hosts):
        return None
    return list(hosts), dict(data)


def _name_data(item: Any) -> tuple[str, dict[str, Any]]:
    return (item[0], dict(item[1])) if isinstance(item, tuple) else (item, {})


def _group_data(folder: Path) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return result
    for file in sorted(folder.glob("*.py")):
        scope = _exec(file)
        imported = set()
        for node in ast.parse(file.read_text()).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
        keys = scope.get("__all__") or [k for k in scope if k not in imported]
        result[file.stem] = {k: v for k, v in scope.items() if k in keys and not k.startswith("__")}
    return result


def read(
    path: Path, override: Mapping[str, Any] | None = None, cwd: Path | None = None
) -> list[tuple[HostEntry, dict[str, Any]]]:
    """Each host of an inventory file: its fleet entry and its merged data."""
    cwd = (cwd or Path.cwd()).resolve()
    scope = _exec(path)
    groups: dict[str, tuple[list[Any], dict[str, Any]]] = {}
    for key, value in scope.items():
        group = _group(key, value)
        if group is not None:
            groups[key] = group
    all_hosts, all_data = groups.pop("all", (None, {}))
    if all_hosts is None:
        all_hosts = list(dict.fromkeys(_name_data(h)[0] for hs, _ in groups.values() for h in hs))
    groups.setdefault(path.stem, (list(all_hosts), {}))

    folders = [cwd / "group_data"]
    if path.parent.resolve() != cwd:
        folders.append(path.parent.resolve() / "group_data")
    files: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for name, data in _group_data(folder).items():
            files.setdefault(name, {}).update(data)
    all_data = {**all_data, **files.pop("all", {})}
    for name, data in files.items():
        hosts, own = groups.get(name, ([], {}))
        groups[name] = (hosts, {**own, **data})

    host_data: dict[str, dict[str, Any]] = {}
    host_groups: dict[str, list[str]] = {}
    for group, (hosts, _) in groups.items():
        for item in hosts:
            name, data = _name_data(item)
            host_data.setdefault(name, {}).update(data)
            host_groups.setdefault(name, []).append(group)
    result = []
    for item in all_hosts:
        name, data = _name_data(item)
        if name.startswith("@"):
            raise ValueError(f"{path}: connector host {name!r}: use pyinfra to deploy it")
        merged = dict(all_data)
        for group in host_groups.get(name, []):
            merged.update(groups[group][1])
        merged.update(host_data.get(name, {}))
        merged.update(data)
        merged.update(override or {})
        entry = HostEntry(
            name, frozenset(host_groups.get(name, [])), merged, merged.get("ssh_hostname")
        )
        result.append((entry, merged))
    return result
