"""The shipped inventories describe valid fleets."""

import runpy
from pathlib import Path

import pytest

from sensormail.fleet import HostEntry, build_fleet

INVENTORIES = Path(__file__).parents[2] / "inventory"


@pytest.mark.parametrize("name", ["lab.py", "example.py"])
def test_inventory_is_a_valid_fleet(name):
    groups = runpy.run_path(str(INVENTORIES / name))
    entries = [
        HostEntry(host, frozenset({group}), data, data.get("ssh_hostname"))
        for group in ("gateway", "sensors")
        for host, data in groups[group]
    ]
    fleet = build_fleet(entries)
    assert len(fleet.sensors) == 2
