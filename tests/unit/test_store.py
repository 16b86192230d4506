"""The PKI store: strict certificates, private keys, nothing regenerated on a rerun."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from sample import entries

from sensormail import pki
from sensormail import store as store_module
from sensormail.fleet import HostEntry, build_fleet
from sensormail.store import HostCredentials, Store, StoreError, default_dir


@pytest.fixture
def passphrase(monkeypatch):
    monkeypatch.setenv("SENSORMAIL_CA_PASSPHRASE", "correct horse battery staple")
    monkeypatch.delenv("SENSORMAIL_CA_PASSPHRASE_FILE", raising=False)


@pytest.fixture
def store(tmp_path, passphrase) -> Store:
    return Store(tmp_path / "pki")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _chain(store: Store, host: str) -> bytes:
    return HostCredentials(store.load_registry()[host], store.host_file(host)).cert_chain_pem


def _verify(store: Store, host: str, purpose: str) -> subprocess.CompletedProcess:
    """openssl verify -x509_strict trusting only the root; the chain comes from the host's file."""
    cert = store.path.parent / f"{host}-chain.pem"
    cert.write_bytes(_chain(store, host))
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", purpose,
         "-CAfile", str(store.path / "ca" / "root.crt"), "-untrusted", str(cert), str(cert)],
        capture_output=True, text=True,
    )  # fmt: skip


def test_certificates_pass_strict_verification(store):
    store.sync(build_fleet(entries()))
    for sensor in ("temp-1", "temp-2"):
        result = _verify(store, sensor, "sslclient")
        assert result.returncode == 0, result.stdout + result.stderr
        # A sensor's certificate is no server certificate.
        assert _verify(store, sensor, "sslserver").returncode != 0
    result = _verify(store, "gw", "sslserver")
    assert result.returncode == 0, result.stdout + result.stderr


def test_certificate_extensions(store):
    creds = store.sync(build_fleet(entries()))
    root = x509.load_pem_x509_certificate((store.path / "ca" / "root.crt").read_bytes())
    issuing = x509.load_pem_x509_certificate((store.path / "ca" / "issuing.crt").read_bytes())
    sensor = x509.load_pem_x509_certificate(creds["temp-1"].cert_chain_pem)
    gateway = x509.load_pem_x509_certificate(creds["gw"].cert_chain_pem)

    for ca, pathlen in ((root, None), (issuing, 0)):
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == pathlen
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign and usage.crl_sign
    for leaf in (sensor, gateway):
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and not bc.value.ca
        leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
    eku = sensor.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    eku = gateway.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = gateway.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.fleet.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.77.0.1"]


def test_secrets_are_private_and_ca_keys_encrypted(store):
    store.sync(build_fleet(entries()))
    for path in store.path.rglob("*"):
        mode = path.stat().st_mode & 0o777
        if path.is_dir():
            assert mode == 0o700, path
        elif path.name in ("root.key", "issuing.key") or path.parent.name == "hosts":
            assert mode == 0o600, path
    assert len(list((store.path / "hosts").glob("*.pem"))) == 3
    for name in ("root.key", "issuing.key"):
        assert b"ENCRYPTED PRIVATE KEY" in (store.path / "ca" / name).read_bytes()


def test_second_sync_changes_no_byte(store):
    fleet = build_fleet(entries())
    store.sync(fleet)
    before = _snapshot(store.path)
    store.sync(fleet)
    assert _snapshot(store.path) == before


def test_addresses_do_not_depend_on_inventory_order(tmp_path, passphrase):
    first = Store(tmp_path / "a").sync(build_fleet(entries()))
    again = Store(tmp_path / "b").sync(build_fleet(entries("temp-2", "temp-1", "gw")))
    assert {n: h.record.address for n, h in first.hosts.items()} == {
        n: h.record.address for n, h in again.hosts.items()
    }


def test_new_sensor_does_not_move_the_others(store):
    before = store.sync(build_fleet(entries("gw", "temp-2")))
    after = store.sync(build_fleet(entries()))
    assert after["temp-2"].record == before["temp-2"].record
    assert after["temp-1"].record.address not in {
        before["gw"].record.address,
        before["temp-2"].record.address,
    }


def test_a_plaintext_ca_key_is_refused_unless_allowed(store, monkeypatch):
    store.sync(build_fleet(entries()))
    key_path = store.ca_dir / "root.key"
    key = serialization.load_pem_private_key(key_path.read_bytes(), b"correct horse battery staple")
    key_path.write_bytes(pki.private_pem(key))
    with pytest.raises(StoreError, match=r"root\.key is not encrypted"):
        store.sync(build_fleet(entries()))
    monkeypatch.setenv("SENSORMAIL_ALLOW_PLAINTEXT_CA", "1")
    store.sync(build_fleet(entries()))


def test_validity_is_utc_with_a_small_backdate(store):
    now = dt.datetime.now(dt.UTC)
    creds = store.sync(build_fleet(entries()), now=now)
    cert = x509.load_pem_x509_certificate(creds["temp-1"].cert_chain_pem)
    assert now - dt.timedelta(minutes=10) < cert.not_valid_before_utc < now
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=365)


def test_encrypted_ca_needs_a_passphrase(tmp_path, monkeypatch):
    monkeypatch.delenv("SENSORMAIL_CA_PASSPHRASE", raising=False)
    monkeypatch.delenv("SENSORMAIL_CA_PASSPHRASE_FILE", raising=False)
    with pytest.raises(StoreError, match="SENSORMAIL_CA_PASSPHRASE"):
        Store(tmp_path / "pki").sync(build_fleet(entries()))


def test_wrong_passphrase_is_refused(store, monkeypatch):
    store.sync(build_fleet(entries()))
    monkeypatch.setenv("SENSORMAIL_CA_PASSPHRASE", "wrong")
    with pytest.raises(StoreError, match="wrong CA passphrase"):
        store.sync(build_fleet(entries()))


def test_lab_fleet_keeps_its_passphrase_in_the_store(tmp_path, monkeypatch):
    monkeypatch.delenv("SENSORMAIL_CA_PASSPHRASE", raising=False)
    monkeypatch.delenv("SENSORMAIL_CA_PASSPHRASE_FILE", raising=False)
    store = Store(tmp_path / "pki")
    store.sync(build_fleet(entries(gw={"sensormail_lab": True})))
    assert (store.path / "lab-passphrase").stat().st_mode & 0o777 == 0o600


def test_a_store_with_its_own_passphrase_gets_no_lab_one(tmp_path, monkeypatch):
    """Marking a fleet as a lab later must not leave a passphrase that opens nothing."""
    monkeypatch.setenv("SENSORMAIL_CA_PASSPHRASE", "the operator's own")
    store = Store(tmp_path / "pki")
    store.sync(build_fleet(entries()))
    monkeypatch.delenv("SENSORMAIL_CA_PASSPHRASE")
    with pytest.raises(StoreError, match="made with a passphrase of your own"):
        store.sync(build_fleet(entries(gw={"sensormail_lab": True})))
    assert not (store.path / "lab-passphrase").exists()


def test_a_large_fleet_is_issued_across_workers(tmp_path, passphrase, monkeypatch):
    """Above PARALLEL_FROM hosts the work is forked out; the result must be the same kind."""
    # As under pyinfra: gevent patched in, with its hub running (which defers os.close).
    import gevent
    import pyinfra_cli  # noqa: F401

    gevent.get_hub()
    monkeypatch.setenv("SENSORMAIL_WORKERS", "2")
    sensors = [
        HostEntry(f"s{i:04d}", frozenset({"sensors"}), {"sensormail_sender": f"s{i:04d}@f.example"})
        for i in range(store_module.PARALLEL_FROM + 100)
    ]
    gateway = entries("gw", gw={"sensormail_vpn_subnet": "10.80.0.0/20"})
    store = Store(tmp_path / "pki")
    creds = store.sync(build_fleet(gateway + sensors))
    records = store.load_registry()
    assert len(records) == len(sensors) + 1
    assert len({r.address for r in records.values()}) == len(records)
    assert len({r.wg_public for r in records.values()}) == len(records)
    for name in ("s0000", "s0555", f"s{len(sensors) - 1:04d}"):
        cert = x509.load_pem_x509_certificate(creds[name].cert_chain_pem)
        key = serialization.load_pem_private_key(creds[name].key_pem(), None)
        assert pki.key_matches(cert, key)
        assert pki.fingerprint(cert) == records[name].cert_sha256
        assert store.host_file(name).stat().st_mode & 0o777 == 0o600
    assert not list(store.path.rglob("*.new"))
    before = _snapshot(store.path)
    store.sync(build_fleet(gateway + sensors))
    assert _snapshot(store.path) == before


def test_a_dry_run_changes_nothing(tmp_path, passphrase):
    store = Store(tmp_path / "pki")
    fleet = build_fleet(entries())
    with pytest.raises(StoreError, match="a dry run creates none"):
        store.sync(fleet, dry_run=True)
    assert not store.path.exists()
    store.sync(fleet)
    before = _snapshot(store.path)
    store.sync(fleet, dry_run=True)  # nothing due: fine
    with pytest.raises(StoreError, match="would change"):
        store.sync(build_fleet(entries(gw={"sensormail_mail_name": "new.fleet.example"})),
                   dry_run=True)  # fmt: skip
    with pytest.raises(StoreError, match="would change"):
        store.sync(fleet, rotate={"temp-1"}, dry_run=True)
    assert _snapshot(store.path) == before
    assert not list(store.path.rglob("*.new"))


def test_the_store_belongs_to_the_project_wherever_the_command_runs(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "inventory").mkdir(parents=True)
    (project / "deploy.py").write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.delenv("SENSORMAIL_PKI_DIR", raising=False)
    monkeypatch.chdir(elsewhere)
    assert default_dir(project) == project / "pki"
    assert default_dir(project / "inventory") == project / "pki"
    assert default_dir() == elsewhere / "pki"  # no project anywhere: the working directory
    monkeypatch.chdir(project / "inventory")
    assert default_dir() == project / "pki"
    monkeypatch.setenv("SENSORMAIL_PKI_DIR", str(tmp_path / "chosen"))
    assert default_dir(project) == tmp_path / "chosen"
