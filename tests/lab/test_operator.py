"""What an operator sees: no secret in pyinfra's output, dry runs that change nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sensormail import pki

ROOT = Path(__file__).parents[2]


def test_diff_shows_no_secret_and_a_dry_run_changes_nothing(deployed_lab, tmp_path):
    """Guards against `pyinfra --diff` printing WireGuard or TLS private keys."""
    tamper = (
        "sed -i 's/^PrivateKey = .*/PrivateKey = AAAA/' /etc/wireguard/sensormail.conf && "
        "echo tampered >> /etc/sensormail/private/key.pem"
    )
    assert deployed_lab.ssh("sensor-1", tamper).returncode == 0
    _, key_pem, wg_private = pki.unbundle(
        (deployed_lab.pki_dir / "hosts" / "sensor-1.pem").read_bytes()
    )
    # Every line of the TLS key, and the WireGuard key.
    secrets = [wg_private, *(ln for ln in key_pem.decode().splitlines() if "-----" not in ln)]
    store_before = {
        p: p.read_bytes() for p in deployed_lab.pki_dir.rglob("*") if p.name != ".lock"
        if p.is_file()
    }  # fmt: skip
    # From another working directory, with absolute paths, as an operator might.
    dry = subprocess.run(
        [str(Path(sys.executable).parent / "pyinfra"), "--dry", "--diff",
         str(ROOT / "inventory" / "lab.py"), str(ROOT / "deploy.py")],
        cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, SENSORMAIL_PKI_DIR=str(deployed_lab.pki_dir)),
    )  # fmt: skip
    output = dry.stdout + dry.stderr
    assert dry.returncode == 0, output[-3000:]
    assert "/etc/wireguard/sensormail.conf" in output  # the change is reported...
    assert "PRIVATE KEY" not in output  # ...by path only
    for secret in secrets:
        assert secret not in output
    assert not (tmp_path / "pki").exists()
    assert {
        p: p.read_bytes() for p in deployed_lab.pki_dir.rglob("*") if p.name != ".lock"
        if p.is_file()
    } == store_before  # fmt: skip
    still = deployed_lab.ssh(
        "sensor-1", "grep -c '^PrivateKey = AAAA' /etc/wireguard/sensormail.conf"
    )
    assert still.stdout.strip() == "1"  # a dry run touched no host

    repaired = deployed_lab.deploy()
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    check = deployed_lab.ssh("sensor-1", "grep -c tampered /etc/sensormail/private/key.pem")
    assert check.stdout.strip() == "0"
    assert deployed_lab.ssh("sensor-1", "wg show sensormail latest-handshakes").returncode == 0


BAD_INVENTORY = """
import runpy
_lab = runpy.run_path({lab!r})
gateway = [(name, dict(data, sensormail_colour="red")) for name, data in _lab["gateway"]]
sensors = [(name, {{k: v for k, v in data.items() if k != "sensormail_sender"}})
           for name, data in _lab["sensors"]]
"""


def test_a_bad_inventory_stops_the_deploy_before_anything_is_pushed(deployed_lab, tmp_path):
    inventory = tmp_path / "bad.py"
    inventory.write_text(BAD_INVENTORY.format(lab=str(ROOT / "inventory" / "lab.py")))
    before = deployed_lab.ssh("gateway", "sha256sum /etc/postfix/main.cf").stdout
    result = subprocess.run(
        [str(Path(sys.executable).parent / "pyinfra"), "-y", str(inventory), "deploy.py"],
        cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, SENSORMAIL_PKI_DIR=str(deployed_lab.pki_dir)),
    )  # fmt: skip
    assert result.returncode != 0
    assert "host 'gateway', field 'sensormail_colour': unknown key" in result.stderr
    for sensor in ("sensor-1", "sensor-2"):
        assert f"host '{sensor}', field 'sensormail_sender': required" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Starting operation" not in result.stderr + result.stdout
    assert deployed_lab.ssh("gateway", "sha256sum /etc/postfix/main.cf").stdout == before
