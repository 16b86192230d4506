"""The shipped inventories describe valid fleets."""

import runpy
from pathlib import Path

import pytest

from sensormail.fleet import DEFAULTS, HostEntry, build_fleet

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


def test_example_shows_every_fleet_option_at_its_default():
    """example.py restates DEFAULTS for the reader: it must not drift from them."""
    gateway_data = runpy.run_path(str(INVENTORIES / "example.py"))["gateway"][0][1]
    shown = {k: v for k, v in gateway_data.items() if k in DEFAULTS}
    assert shown == DEFAULTS
