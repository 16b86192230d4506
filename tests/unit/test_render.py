"""Rendered host files for the sample fleet, compared with golden files.

Regenerate after an intended change with SENSORMAIL_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from sample import entries

from sensormail import pki, render
from sensormail.fleet import build_fleet
from sensormail.store import Credentials, HostCredentials, HostRecord

GOLDEN = Path(__file__).parents[1] / "golden" / "sample"
ADDRESSES = {"gw": "10.77.0.1", "temp-1": "10.77.0.2", "temp-2": "10.77.0.3"}


def _pem(kind: str, name: str) -> bytes:
    # Stand-ins: rendering only places PEM text, it never parses it.
    return f"-----BEGIN {kind}-----\n{name}\n-----END {kind}-----\n".encode()


class Placeholders(HostCredentials):
    """Bundles of placeholder text, so the golden files stay the same from run to run
    (test_store checks real bundles against the registry)."""

    def check(self, chain: bytes, key_pem: bytes, wg_private: str) -> None:
        pass


@pytest.fixture
def fleet_and_credentials(tmp_path):
    fleet = build_fleet(entries())
    hosts = {}
    for i, (name, address) in enumerate(ADDRESSES.items()):
        bundle = tmp_path / f"{name}.pem"
        bundle.write_bytes(
            pki.bundle(
                _pem("CERTIFICATE", f"{name} chain"),
                pki.private_pem(pki.new_key()),  # made per run: no key is ever committed
                f"{name}-wireguard-private-key=",
            )
        )
        record = HostRecord(
            name=name,
            role="gateway" if name == "gw" else "sensor",
            address=address,
            wg_public=f"{name}-wireguard-public-key=",
            cert_serial=f"{i + 1:x}",
            cert_sha256=":".join([f"{i + 1:02X}"] * 32),
            not_before="2026-01-01T00:00:00+00:00",
            not_after="2027-01-01T00:00:00+00:00",
            sender="" if name == "gw" else f"{name}@sensors.fleet.example",
        )
        hosts[name] = Placeholders(record, bundle)
    return fleet, Credentials(_pem("CERTIFICATE", "root"), hosts)


def _rendered(fleet, creds) -> dict[str, render.HostFile]:
    files = {f"gw{f.path}": f for f in render.gateway_files(fleet, creds)}
    for sensor in ("temp-1", "temp-2"):
        files |= {f"{sensor}{f.path}": f for f in render.sensor_files(fleet, creds, sensor)}
    return files


def _tls_key_of(rel: str) -> str | None:
    """The host whose TLS key this rendered file is (compared with the key, not a golden file)."""
    return rel.split("/", 1)[0] if rel.endswith("/private/key.pem") else None


def test_rendered_files_match_golden(fleet_and_credentials):
    _, creds = fleet_and_credentials
    files = _rendered(*fleet_and_credentials)
    for rel in [rel for rel in files if _tls_key_of(rel)]:
        assert files.pop(rel).content == creds[_tls_key_of(rel)].key_pem().decode()
    if os.environ.get("SENSORMAIL_UPDATE_GOLDEN") == "1":
        for rel, f in files.items():
            (GOLDEN / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / rel).write_text(f.content)
    golden = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*") if p.is_file()}
    assert golden == set(files), "files added or missing; regenerate the golden files"
    for rel, f in files.items():
        expected = (GOLDEN / rel).read_text()
        diff = "".join(
            difflib.unified_diff(expected.splitlines(True), f.content.splitlines(True), rel, rel)
        )
        assert not diff, diff


def test_secrets_are_marked_private(fleet_and_credentials):
    files = _rendered(*fleet_and_credentials)
    secret = {rel for rel, f in files.items() if f.mode == "0600"}
    assert secret == {
        "gw/etc/wireguard/sensormail.conf",
        "gw/etc/postfix/sensormail/private/key.pem",
        "temp-1/etc/wireguard/sensormail.conf",
        "temp-1/etc/sensormail/private/key.pem",
        "temp-2/etc/wireguard/sensormail.conf",
        "temp-2/etc/sensormail/private/key.pem",
    }


def test_a_sensor_gets_no_other_hosts_secret(fleet_and_credentials):
    _, creds = fleet_and_credentials
    files = _rendered(*fleet_and_credentials)
    for rel, f in files.items():
        if rel.startswith("temp-1/"):
            for other in ("gw", "temp-2"):
                assert creds[other].wg_private() not in f.content, rel
                assert creds[other].key_pem().decode() not in f.content, rel


def test_agent_is_valid_python(fleet_and_credentials):
    files = _rendered(*fleet_and_credentials)
    compile(files["temp-1/usr/local/bin/sensormail-send"].content, "sensormail-send", "exec")
