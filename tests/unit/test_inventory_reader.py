"""The CLI's inventory reader agrees with pyinfra's own, host by host."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyinfra.api import Config, State
from pyinfra.context import ctx_config, ctx_state
from pyinfra_cli.inventory import make_inventory

from sensormail import inventory

ROOT = Path(__file__).parents[2]

LAYERED = """
from os import path  # imports are not data

gateway = [("gw", {"ssh_hostname": "192.0.2.1", "sensormail_relay": "[192.0.2.9]:25"})]
sensors = (
    [("temp-1", {"sensormail_sender": "temp-1@f.example"}), "temp-2"],
    {"sensormail_mode": "cert", "colour": "group"},
)
outdoor = [("temp-2", {"sensormail_sender": "temp-2@f.example", "colour": "host"})]
_private = ["not-a-host"]
"""


def _pyinfra(path: Path, cwd: Path, override: dict) -> dict[str, tuple[frozenset, dict]]:
    state, config = State(), Config()
    state.cwd = str(cwd)
    with ctx_state.use(state), ctx_config.use(config):
        inv = make_inventory(str(path), cwd=str(cwd), override_data=override)
        return {h.name: (frozenset(h.groups), h.data.dict()) for h in inv}


def _ours(path: Path, cwd: Path, override: dict) -> dict[str, tuple[frozenset, dict]]:
    return {e.name: (e.groups, data) for e, data in inventory.read(path, override, cwd=cwd)}


@pytest.fixture
def layered(tmp_path) -> Path:
    (tmp_path / "inventory" / "group_data").mkdir(parents=True)
    (tmp_path / "group_data").mkdir()
    (tmp_path / "inventory" / "fleet.py").write_text(LAYERED)
    (tmp_path / "group_data" / "all.py").write_text('sensormail_wg_port = 51999\ncolour = "all"\n')
    (tmp_path / "inventory" / "group_data" / "all.py").write_text("sensormail_wg_port = 51821\n")
    (tmp_path / "inventory" / "group_data" / "sensors.py").write_text('colour = "file"\n')
    (tmp_path / "inventory" / "group_data" / "spare.py").write_text('colour = "spare"\n')
    return tmp_path


@pytest.mark.parametrize("override", [{}, {"rotate": "temp-1", "colour": "override"}])
def test_layered_inventory(layered, override):
    path = layered / "inventory" / "fleet.py"
    expected = _pyinfra(path, layered, override)
    assert _ours(path, layered, override) == expected
    assert expected["temp-2"][1]["colour"] == override.get("colour", "host")


@pytest.mark.parametrize("name", ["lab.py", "example.py"])
def test_shipped_inventories(name):
    path = ROOT / "inventory" / name
    assert _ours(path, ROOT, {}) == _pyinfra(path, ROOT, {})
