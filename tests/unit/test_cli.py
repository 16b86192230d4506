"""`sensormail pki …` as an operator runs it: a real inventory file, any working directory."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

INVENTORY = """
gateway = [("gw", {"ssh_hostname": "192.0.2.1", "sensormail_mail_name": "gw.fleet.example"})]
sensors = [
    ("temp-1", {"sensormail_sender": "temp-1@sensors.fleet.example"}),
    ("temp-2", {"sensormail_sender": "temp-2@sensors.fleet.example"}),
]
"""


@pytest.fixture
def project(tmp_path) -> Path:
    """A project directory: deploy.py, inventory/, and the store under pki/."""
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "fleet.py").write_text(INVENTORY)
    (tmp_path / "deploy.py").write_text("")
    return tmp_path


def sensormail(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SENSORMAIL_")}
    environ |= {"SENSORMAIL_CA_PASSPHRASE": "cli test"} | env
    return subprocess.run(
        [sys.executable, "-m", "sensormail.cli", *args],
        cwd=cwd, env=environ, capture_output=True, text=True,
    )  # fmt: skip


def test_sync_status_revoke_from_anywhere(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    inventory = project / "inventory" / "fleet.py"
    synced = sensormail("pki", "sync", "-i", str(inventory), cwd=elsewhere)
    assert synced.returncode == 0, synced.stderr
    assert (project / "pki" / "ca" / "root.crt").exists()  # the project's store, not cwd's
    assert not (elsewhere / "pki").exists()

    status = sensormail("pki", "status", cwd=project / "inventory")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split()[:4] == ["host", "role", "mode", "address"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["temp-1"][1:4] == ["sensor", "cert", "10.77.0.2"]
    assert rows["gw"][3] == "10.77.0.1"

    # Everything expires within 400 days: a non-zero exit names them.
    warn = sensormail("pki", "status", "--warn-days", "400", cwd=project)
    assert warn.returncode == 1
    assert "temp-1" in warn.stderr

    # A host gone from the inventory is listed but does not fail the check.
    smaller = project / "inventory" / "smaller.py"
    smaller.write_text(
        INVENTORY.replace('("temp-2", {"sensormail_sender": "temp-2@sensors.fleet.example"}),', "")
    )
    gone = sensormail("pki", "status", "-i", str(smaller), "--warn-days", "30", cwd=project)
    assert gone.returncode == 0, gone.stderr
    assert "not in the inventory" in next(
        row for row in gone.stdout.splitlines() if "temp-2" in row
    )

    revoked = sensormail("pki", "revoke", "temp-1", cwd=project)
    assert revoked.returncode == 0, revoked.stderr
    registry = json.loads((project / "pki" / "registry.json").read_text())
    assert registry["hosts"]["temp-1"]["revoked"]
    assert registry["revoked"][0]["host"] == "temp-1"
    assert "revoked" in sensormail("pki", "status", cwd=project).stdout


def test_sync_is_what_the_store_does_and_a_rerun_writes_nothing(project):
    inventory = str(project / "inventory" / "fleet.py")
    first = sensormail("pki", "sync", "-i", inventory, cwd=project)
    assert first.returncode == 0
    assert "a new store with a new CA, 3 new" in first.stderr
    before = {p: p.read_bytes() for p in (project / "pki").rglob("*") if p.is_file()}
    again = sensormail("pki", "sync", "-i", inventory, cwd=project)
    assert again.returncode == 0
    assert "nothing changed" in again.stderr
    after = {p: p.read_bytes() for p in (project / "pki").rglob("*") if p.is_file()}
    assert after == before
    rotated = sensormail("pki", "sync", "-i", inventory, "--rotate", "temp-2", cwd=project)
    assert rotated.returncode == 0, rotated.stderr
    assert "1 renewed or rotated" in rotated.stderr
    key = project / "pki" / "hosts" / "temp-2.pem"
    assert key.read_bytes() != before[key]


def test_bad_inventory_is_named_and_nothing_is_written(project):
    bad = project / "inventory" / "bad.py"
    bad.write_text(
        INVENTORY.replace('"sensormail_sender": "temp-2@', '"sensormail_sendr": "temp-2@')
    )
    result = sensormail("pki", "sync", "-i", str(bad), cwd=project)
    assert result.returncode == 1
    assert "host 'temp-2', field 'sensormail_sendr': unknown key" in result.stderr
    assert "host 'temp-2', field 'sensormail_sender': required" in result.stderr
    assert not (project / "pki").exists()


def test_missing_passphrase_and_unknown_host(project):
    inventory = str(project / "inventory" / "fleet.py")
    result = sensormail("pki", "sync", "-i", inventory, cwd=project, SENSORMAIL_CA_PASSPHRASE="")
    assert result.returncode == 1
    assert "SENSORMAIL_CA_PASSPHRASE" in result.stderr
    assert sensormail("pki", "sync", "-i", inventory, cwd=project).returncode == 0
    result = sensormail("pki", "revoke", "nope", cwd=project)
    assert result.returncode == 1 and "'nope': not in the registry" in result.stderr


def test_a_long_sync_shows_progress(project):
    sensors = ",\n".join(
        f'("s{i:04d}", {{"sensormail_sender": "s{i:04d}@f.example"}})' for i in range(1200)
    )
    big = project / "inventory" / "big.py"
    gateway = '[("gw", {"ssh_hostname": "192.0.2.1", "sensormail_vpn_subnet": "10.80.0.0/20"})]'
    big.write_text(f"gateway = {gateway}\nsensors = [{sensors}]\n")
    result = sensormail("pki", "sync", "-i", str(big), cwd=project)
    assert result.returncode == 0, result.stderr
    assert "] 1201/1201 hosts" in result.stderr  # the bar's last state (no terminal: one line)
    assert "1201 hosts in sync" in result.stderr


def test_forget_refuses_a_host_still_in_the_inventory(project):
    inventory = project / "inventory" / "fleet.py"
    assert sensormail("pki", "sync", "-i", str(inventory), cwd=project).returncode == 0
    assert sensormail("pki", "revoke", "temp-2", cwd=project).returncode == 0
    listed = sensormail("pki", "forget", "temp-2", "-i", str(inventory), cwd=project)
    assert listed.returncode == 1
    assert "'temp-2' is still in" in listed.stderr
    assert "temp-2" in json.loads((project / "pki" / "registry.json").read_text())["hosts"]

    inventory.write_text(
        INVENTORY.replace('("temp-2", {"sensormail_sender": "temp-2@sensors.fleet.example"}),', "")
    )
    gone = sensormail("pki", "forget", "temp-2", "-i", str(inventory), cwd=project)
    assert gone.returncode == 0, gone.stderr
    assert "temp-2" not in json.loads((project / "pki" / "registry.json").read_text())["hosts"]


def test_sync_after_a_revocation_says_the_crl_changed(project):
    inventory = project / "inventory" / "fleet.py"
    first = sensormail("pki", "sync", "-i", str(inventory), cwd=project)
    assert "CRL" not in first.stderr  # the first CRL comes with the new store
    assert sensormail("pki", "revoke", "temp-2", cwd=project).returncode == 0
    synced = sensormail("pki", "sync", "-i", str(inventory), cwd=project)
    assert synced.returncode == 0, synced.stderr
    assert "3 hosts in sync, 1 revoked" in synced.stderr
    assert "(CRL re-issued;" in synced.stderr
    again = sensormail("pki", "sync", "-i", str(inventory), cwd=project)
    assert "(nothing changed;" in again.stderr


def test_commands_outside_a_project_make_no_store(tmp_path):
    for command in (["status"], ["revoke", "temp-1"]):
        result = sensormail("pki", *command, cwd=tmp_path)
        assert result.returncode == 1
        assert f"no store at {tmp_path / 'pki'}: run this in the project" in result.stderr
    assert not (tmp_path / "pki").exists()


def test_bad_settings_are_named_not_tracebacks(project):
    inventory = project / "inventory" / "fleet.py"
    missing = sensormail("pki", "forget", "temp-1", "-i", str(project / "nope.py"), cwd=project)
    assert missing.returncode == 1 and "no inventory file" in missing.stderr
    workers = sensormail("pki", "sync", "-i", str(inventory), cwd=project, SENSORMAIL_WORKERS="x")
    assert sensormail("pki", "sync", "-i", str(inventory), cwd=project).returncode == 0
    timeout = sensormail("pki", "revoke", "temp-1", cwd=project, SENSORMAIL_LOCK_TIMEOUT="abc")
    for result, name in ((workers, "SENSORMAIL_WORKERS"), (timeout, "SENSORMAIL_LOCK_TIMEOUT")):
        assert result.returncode == 1
        assert f"{name}: not a number of 0 or more" in result.stderr
        assert "Traceback" not in result.stderr


def test_status_shows_the_crl_and_fails_when_it_has_lapsed(project, monkeypatch):
    from sensormail import inventory
    from sensormail.fleet import build_fleet
    from sensormail.store import Store

    monkeypatch.setenv("SENSORMAIL_CA_PASSPHRASE", "cli test")
    fleet = build_fleet(e for e, _ in inventory.read(project / "inventory" / "fleet.py"))
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)  # a 30-day CRL, never renewed
    Store(project / "pki").sync(fleet, now=long_ago)
    lapsed = sensormail("pki", "status", "--warn-days", "0", cwd=project)
    assert lapsed.returncode == 1
    assert "lapsed: run sensormail pki sync" in lapsed.stdout
    assert "(CRL)" in lapsed.stderr
    assert sensormail("pki", "sync", "-i", "inventory/fleet.py", cwd=project).returncode == 0
    renewed = sensormail("pki", "status", "--warn-days", "0", cwd=project)
    assert renewed.returncode == 0, renewed.stderr
    assert "next update; renewed by a sync" in renewed.stdout


def test_status_says_a_lost_registry_is_lost(project):
    assert sensormail("pki", "sync", "-i", "inventory/fleet.py", cwd=project).returncode == 0
    (project / "pki" / "registry.json").unlink()
    status = sensormail("pki", "status", cwd=project)
    assert status.returncode == 1
    assert "registry.json is missing beside an existing CA" in status.stderr
