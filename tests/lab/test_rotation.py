"""Revocation and rotation through a deploy: one registry change, applied to every layer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_mail import SENSORS, probe

ROOT = Path(__file__).parents[2]


def _registry(the_lab) -> dict:
    return json.loads((the_lab.pki_dir / "registry.json").read_text())


def _gateway_state(the_lab) -> tuple[str, str]:
    peers = the_lab.ssh("gateway", "wg show sensormail allowed-ips").stdout
    ccert = the_lab.ssh("gateway", "cat /etc/postfix/sensormail/ccert_access").stdout
    return peers, ccert


def _store_files(the_lab) -> dict[str, bytes]:
    return {
        str(p.relative_to(the_lab.pki_dir)): p.read_bytes()
        for p in sorted(the_lab.pki_dir.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_a_dry_run_previews_a_rotation_and_changes_nothing(deployed_lab):
    """--dry with new keys due shows what would change, made with throwaway keys."""
    store = _store_files(deployed_lab)
    sums = "sha256sum /etc/wireguard/sensormail.conf /etc/sensormail/private/key.pem"
    sensor = deployed_lab.ssh("sensor-1", sums).stdout
    gateway = deployed_lab.ssh("gateway", "sha256sum /etc/postfix/sensormail/ccert_access").stdout
    dry = subprocess.run(  # no -y: with it pyinfra skips change detection
        [str(Path(sys.executable).parent / "pyinfra"), "--dry", "--diff",
         "inventory/lab.py", "deploy.py", "--data", "rotate=sensor-1"],
        cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, SENSORMAIL_PKI_DIR=str(deployed_lab.pki_dir)),
    )  # fmt: skip
    output = dry.stdout + dry.stderr
    assert dry.returncode == 0, output[-3000:]
    # The sensor's keys and the gateway's certificate map would change: shown by path
    # (secrets) and by diff (the map), with no key in sight.
    assert "/etc/sensormail/private/key.pem" in output
    assert "ccert_access" in output
    assert "PRIVATE KEY" not in output
    assert _store_files(deployed_lab) == store
    assert not list(deployed_lab.pki_dir.glob(".preview-*"))
    assert deployed_lab.ssh("sensor-1", sums).stdout == sensor
    assert (
        deployed_lab.ssh("gateway", "sha256sum /etc/postfix/sensormail/ccert_access").stdout
        == gateway
    )


def test_revoked_sensor_is_cut_off_and_rotation_readmits_it(deployed_lab):
    before = _registry(deployed_lab)["hosts"]["sensor-2"]
    revoked = deployed_lab.sensormail("pki", "revoke", "sensor-2")
    assert revoked.returncode == 0, revoked.stderr
    deployed = deployed_lab.deploy()
    assert deployed.returncode == 0, deployed.stderr[-3000:]

    peers, ccert = _gateway_state(deployed_lab)
    assert before["address"] not in peers and before["wg_public"] not in peers
    assert before["cert_sha256"] not in ccert
    assert "RCPT 250" == probe(deployed_lab, "sensor-1", "cert", SENSORS["sensor-1"])
    assert probe(deployed_lab, "sensor-2", "cert", SENSORS["sensor-2"], timeout=5).startswith(
        "ERROR"
    )
    crl = deployed_lab.ssh("gateway", "true")  # the CRL lives in the store:
    assert crl.returncode == 0
    listed = deployed_lab.sensormail("pki", "status")
    assert "revoked" in next(line for line in listed.stdout.splitlines() if "sensor-2" in line)

    rotated = deployed_lab.deploy("--data", "rotate=sensor-2")
    assert rotated.returncode == 0, rotated.stderr[-3000:]
    after = _registry(deployed_lab)["hosts"]["sensor-2"]
    assert not after["revoked"]
    assert after["address"] == before["address"]
    assert after["wg_public"] != before["wg_public"]
    assert after["cert_sha256"] != before["cert_sha256"]
    peers, ccert = _gateway_state(deployed_lab)
    assert after["wg_public"] in peers and after["cert_sha256"] in ccert
    assert probe(deployed_lab, "sensor-2", "cert", SENSORS["sensor-2"]) == "RCPT 250"


def test_limited_deploy_changes_nothing_in_the_store(deployed_lab):
    before = (deployed_lab.pki_dir / "registry.json").read_bytes()
    result = deployed_lab.deploy("--limit", "sensor-1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (deployed_lab.pki_dir / "registry.json").read_bytes() == before
    total = next(line for line in result.stderr.splitlines() if "Grand total" in line)
    assert total.split()[-3:-1] == ["-", "-"], total  # no success (= change), no error


def test_rotation_without_the_gateway_is_refused(deployed_lab):
    before = (deployed_lab.pki_dir / "registry.json").read_bytes()
    result = deployed_lab.deploy("--limit", "sensor-1", "--data", "rotate=sensor-1")
    assert result.returncode != 0
    assert "must all be part of this run, but gateway is not" in result.stderr
    assert (deployed_lab.pki_dir / "registry.json").read_bytes() == before


RENEWING = """
import runpy
_lab = runpy.run_path({lab!r})
# Everything is due at once: a renewal fraction of a few seconds of the lifetime.
gateway = [(name, dict(data, sensormail_renew_after=0.000001)) for name, data in _lab["gateway"]]
sensors = _lab["sensors"]
"""


def test_due_renewal_waits_for_a_run_that_reaches_every_renewed_host(deployed_lab, tmp_path):
    """Guards against a --limit run renewing certificates the gateway never learns of."""
    inventory = tmp_path / "renewing.py"
    inventory.write_text(RENEWING.format(lab=str(ROOT / "inventory" / "lab.py")))
    before = (deployed_lab.pki_dir / "registry.json").read_bytes()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "pyinfra"), "-y", str(inventory), "deploy.py",
         "--limit", "sensor-1"],
        cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, SENSORMAIL_PKI_DIR=str(deployed_lab.pki_dir)),
    )  # fmt: skip
    assert result.returncode != 0
    assert "new credentials are due for gateway, sensor-1, sensor-2" in result.stderr
    assert (deployed_lab.pki_dir / "registry.json").read_bytes() == before
    assert probe(deployed_lab, "sensor-1", "cert", SENSORS["sensor-1"]) == "RCPT 250"
