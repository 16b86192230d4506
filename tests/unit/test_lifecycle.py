"""Renewal, rotation, revocation, address keeping, validation of the registry."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sample import entries

from sensormail import pki, render
from sensormail.fleet import HostEntry, build_fleet
from sensormail.store import HostCredentials, Store, StoreError

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
ROOT = Path(__file__).parents[2]


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    monkeypatch.setenv("SENSORMAIL_CA_PASSPHRASE", "lifecycle")
    return Store(tmp_path / "pki")


def _crl(store: Store) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((store.ca_dir / "crl.pem").read_bytes())


def test_renewal_keeps_the_key_and_replaces_the_certificate(store):
    fleet = build_fleet(entries())
    first = store.sync(fleet, now=NOW)
    old = {n: (h.record.cert_serial, h.key_pem(), h.wg_private()) for n, h in first.hosts.items()}
    # Not yet due one day before two thirds of the 365-day lifetime...
    store.sync(fleet, now=NOW + dt.timedelta(days=240))
    assert store.load_registry()["temp-1"].cert_serial == old["temp-1"][0]
    # ...due after it.
    later = store.sync(fleet, now=NOW + dt.timedelta(days=245))
    for name, (serial, key, wg) in old.items():
        host = later[name]
        assert host.record.cert_serial != serial
        assert host.key_pem() == key and host.wg_private() == wg
        cert = pki.load_cert(host.cert_chain_pem)
        assert pki.key_matches(cert, serialization.load_pem_private_key(key, None))
        assert cert.not_valid_before_utc > NOW


def test_lifetimes_come_from_the_inventory(store):
    fleet = build_fleet(entries(gw={"sensormail_cert_days": 30}))
    creds = store.sync(fleet, now=NOW)
    cert = pki.load_cert(creds["temp-1"].cert_chain_pem)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30)


def test_crl_is_reissued_well_before_next_update(store):
    fleet = build_fleet(entries())
    store.sync(fleet, now=NOW)
    first = _crl(store)
    assert first.next_update_utc - first.last_update_utc == dt.timedelta(days=30)
    store.sync(fleet, now=NOW + dt.timedelta(days=10))
    assert _crl(store).last_update_utc == first.last_update_utc  # still fresh: unchanged
    store.sync(fleet, now=NOW + dt.timedelta(days=21))
    renewed = _crl(store)
    assert renewed.last_update_utc > first.last_update_utc
    assert renewed.next_update_utc > first.next_update_utc


def test_rotate_replaces_keys_and_supersedes_the_old_certificate(store):
    fleet = build_fleet(entries())
    before = store.sync(fleet, now=NOW)
    old_serial = before["temp-1"].record.cert_serial
    old_key, old_wg = before["temp-1"].key_pem(), before["temp-1"].wg_private()
    other = (before["temp-2"].record, before["temp-2"].key_pem())
    after = store.sync(fleet, now=NOW, rotate={"temp-1"})
    assert after["temp-1"].key_pem() != old_key
    assert after["temp-1"].wg_private() != old_wg
    assert after["temp-1"].record.address == before["temp-1"].record.address
    assert (after["temp-2"].record, after["temp-2"].key_pem()) == other
    revoked = _crl(store).get_revoked_certificate_by_serial_number(int(old_serial, 16))
    assert revoked is not None


def test_rotate_all_and_unknown_names(store):
    fleet = build_fleet(entries())
    before = store.sync(fleet, now=NOW)
    keys = {n: h.key_pem() for n, h in before.hosts.items()}
    after = store.sync(fleet, now=NOW, rotate={"all"})
    assert all(after[n].key_pem() != k for n, k in keys.items())
    with pytest.raises(StoreError, match="no such host in the inventory: nope"):
        store.sync(fleet, now=NOW, rotate={"nope"})


def test_revocation_reaches_the_crl_and_the_gateway(store):
    fleet = build_fleet(entries())
    creds = store.sync(fleet, now=NOW)
    serial = creds["temp-1"].record.cert_serial
    fingerprint = creds["temp-1"].record.cert_sha256
    store.revoke("temp-1", now=NOW)
    creds = store.sync(fleet, now=NOW)
    assert _crl(store).get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    assert creds["temp-1"].revoked
    files = {f.path: f.content for f in render.gateway_files(fleet, creds)}
    assert fingerprint not in files[f"{render.POSTFIX_DIR}/ccert_access"]
    assert "temp-1" not in files[render.WG_CONF]
    assert "temp-2" in files[render.WG_CONF]
    # Nothing is renewed for a revoked host, even when due; rotation re-admits it.
    store.sync(fleet, now=NOW + dt.timedelta(days=300))
    assert store.load_registry()["temp-1"].cert_serial == serial
    readmitted = store.sync(fleet, now=NOW, rotate={"temp-1"})
    assert not readmitted["temp-1"].revoked
    assert readmitted["temp-1"].record.cert_serial != serial


def test_revoke_errors(store):
    store.sync(build_fleet(entries()), now=NOW)
    with pytest.raises(StoreError, match="'nope': not in the registry"):
        store.revoke("nope")
    with pytest.raises(StoreError, match="gateway cannot be revoked"):
        store.revoke("gw")


def test_removed_sensor_keeps_its_address_while_its_certificate_is_valid(store):
    first = store.sync(build_fleet(entries()), now=NOW)
    newcomer = entries("temp-2")[0].__class__(
        "temp-3", frozenset({"sensors"}), {"sensormail_sender": "temp-3@sensors.fleet.example"}
    )
    fleet = build_fleet([*entries("gw", "temp-2"), newcomer])
    creds = store.sync(fleet, now=NOW)
    assert creds["temp-3"].record.address not in {h.record.address for h in first.hosts.values()}
    # Once temp-1's certificate has expired, its address is free again.
    later = Store(store.path)
    gone = build_fleet(entries("gw", "temp-2"))
    later.sync(gone, now=NOW + dt.timedelta(days=400))
    another = newcomer.__class__(
        "temp-4", frozenset({"sensors"}), {"sensormail_sender": "temp-4@sensors.fleet.example"}
    )
    creds = later.sync(build_fleet([*entries("gw", "temp-2"), newcomer, another]),
                       now=NOW + dt.timedelta(days=400))  # fmt: skip
    assert creds["temp-4"].record.address == first["temp-1"].record.address


def test_duplicate_wireguard_keys_are_refused(store):
    store.sync(build_fleet(entries()), now=NOW)
    # temp-2's bundle with temp-1's WireGuard key, as a careless copy would make it.
    records = store.load_registry()
    one = HostCredentials(records["temp-1"], store.host_file("temp-1"))
    two = HostCredentials(records["temp-2"], store.host_file("temp-2"))
    store.host_file("temp-2").write_bytes(
        pki.bundle(two.cert_chain_pem, two.key_pem(), one.wg_private())
    )
    # A rerun trusts the registry; the copy is found once temp-2's file is read again.
    doc = json.loads(store.registry_path.read_text())
    doc["hosts"]["temp-2"]["sender"] = "changed@x.example"  # forces a re-read
    store.registry_path.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=r"'temp-2'.*does not hold the keys the registry lists"):
        store.sync(build_fleet(entries()), now=NOW)


def test_duplicate_registered_addresses_are_refused(store):
    store.sync(build_fleet(entries()), now=NOW)
    doc = json.loads(store.registry_path.read_text())
    doc["hosts"]["temp-2"]["address"] = doc["hosts"]["temp-1"]["address"]
    store.registry_path.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="field 'address'"):
        store.sync(build_fleet(entries()), now=NOW)


def test_subnet_change_is_refused(store):
    store.sync(build_fleet(entries()), now=NOW)
    moved = build_fleet(entries(gw={"sensormail_vpn_subnet": "10.78.0.0/24"}))
    with pytest.raises(StoreError, match="field 'sensormail_vpn_subnet'"):
        store.sync(moved, now=NOW)


def test_rotate_all_does_not_readmit_revoked_hosts(store):
    fleet = build_fleet(entries())
    store.sync(fleet, now=NOW)
    store.revoke("temp-1", now=NOW)
    serial = store.load_registry()["temp-1"].cert_serial
    store.sync(fleet, now=NOW, rotate={"all"})
    assert store.load_registry()["temp-1"].revoked
    assert store.load_registry()["temp-1"].cert_serial == serial
    store.sync(fleet, now=NOW, rotate={"all", "temp-1"})  # named: re-admitted
    assert not store.load_registry()["temp-1"].revoked


def test_lost_files_are_never_replaced_silently(store):
    fleet = build_fleet(entries())
    store.sync(fleet, now=NOW)
    bundle = store.host_file("temp-1").read_bytes()
    store.host_file("temp-1").unlink()
    with pytest.raises(StoreError, match=r"temp-1\.pem is missing"):
        store.sync(fleet, now=NOW + dt.timedelta(days=300))  # due, so it is read
    store.host_file("temp-1").write_bytes(bundle)
    root = (store.ca_dir / "root.crt").read_bytes()
    (store.ca_dir / "root.crt").unlink()
    with pytest.raises(StoreError, match=r"root\.crt is missing"):
        store.sync(fleet, now=NOW)
    (store.ca_dir / "root.crt").write_bytes(root)
    store.sync(fleet, now=NOW)


@pytest.mark.parametrize(
    "damage",
    ["{not json", '{"version": 2, "hosts": {"x": {"name": "x"}}}', '{"version": 9, "hosts": {}}'],
)
def test_a_damaged_registry_is_a_clear_error(store, damage):
    store.sync(build_fleet(entries()), now=NOW)
    store.registry_path.write_text(damage)
    with pytest.raises(StoreError, match="registry"):
        store.sync(build_fleet(entries()), now=NOW)


def test_no_certificate_outlives_its_issuer(store):
    fleet = build_fleet(entries())
    store.sync(fleet, now=NOW)
    issuing = x509.load_pem_x509_certificate((store.ca_dir / "issuing.crt").read_bytes())
    # Near the end of the issuing CA's life (renewal disabled by a late fraction).
    late = build_fleet(entries(gw={"sensormail_renew_after": 0.999}))
    when = issuing.not_valid_after_utc - dt.timedelta(days=100)
    creds = store.sync(late, now=when, rotate={"temp-1"})
    cert = x509.load_pem_x509_certificate(creds["temp-1"].cert_chain_pem)
    assert cert.not_valid_after_utc <= issuing.not_valid_after_utc


def test_files_staged_by_an_interrupted_run_are_removed(store):
    store.sync(build_fleet(entries()), now=NOW)
    stale = store.path / "hosts" / ".temp-1.pem.new"
    stale.write_bytes(b"half a key")
    store.sync(build_fleet(entries()), now=NOW)
    assert not stale.exists()


def test_crl_numbers_grow_and_a_serial_is_listed_once(store):
    fleet = build_fleet(entries())
    store.sync(fleet, now=NOW)
    numbers = [_crl(store).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number]
    serial = store.load_registry()["temp-1"].cert_serial
    store.revoke("temp-1", now=NOW)
    store.sync(fleet, now=NOW)  # same second: still a new number
    numbers.append(_crl(store).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    store.sync(fleet, now=NOW + dt.timedelta(hours=1), rotate={"temp-1"})
    crl = _crl(store)
    numbers.append(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    assert numbers[0] < numbers[1] <= numbers[2]  # unchanged list, fresh CRL: kept
    listed = [r for r in crl if r.serial_number == int(serial, 16)]
    assert len(listed) == 1
    assert listed[0].revocation_date_utc == NOW  # the revocation, not the later rotation


def test_forget_frees_a_revoked_hosts_address(store):
    fleet = build_fleet(entries())
    first = store.sync(fleet, now=NOW)
    with pytest.raises(StoreError, match="revoke it first"):
        store.forget("temp-1", now=NOW)
    store.revoke("temp-1", now=NOW)
    store.forget("temp-1", now=NOW)
    assert "temp-1" not in store.load_registry()
    assert not store.host_file("temp-1").exists()
    assert _crl(store) is not None
    # Its address is free for a newcomer at once; the CRL still lists the old serial.
    newcomer = entries("temp-2")[0].__class__(
        "temp-3", frozenset({"sensors"}), {"sensormail_sender": "temp-3@sensors.fleet.example"}
    )
    creds = store.sync(build_fleet([*entries("gw", "temp-2"), newcomer]), now=NOW)
    assert creds["temp-3"].record.address == first["temp-1"].record.address
    serial = int(first["temp-1"].record.cert_serial, 16)
    assert _crl(store).get_revoked_certificate_by_serial_number(serial) is not None


def _files(root) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock" and ".preview-" not in str(p)
    }


def test_a_preview_makes_what_sync_would_and_leaves_the_store_alone(store):
    """What a dry run shows: new keys made in a throwaway copy, never in the store."""
    fleet = build_fleet(entries())
    store.sync(fleet)
    before = _files(store.path)
    preview = store.preview(fleet, rotate={"temp-1"})
    assert preview["temp-1"].record.cert_sha256 != store.load_registry()["temp-1"].cert_sha256
    assert preview["temp-2"].record == store.load_registry()["temp-2"]  # nothing due: the same
    copy = preview["temp-1"].path.parent.parent
    assert copy.parent == store.path and copy.name.startswith(".preview-")
    assert preview["temp-1"].path.stat().st_mode & 0o777 == 0o600
    assert _files(store.path) == before
    # The next run of the store's lock keeps a live preview and clears a killed one's.
    dead = store.path / ".preview-999999999"
    dead.mkdir(mode=0o700)
    store.sync(fleet)
    assert copy.exists() and not dead.exists()


def test_a_preview_of_a_store_not_yet_made_makes_none(tmp_path, monkeypatch):
    monkeypatch.setenv("SENSORMAIL_CA_PASSPHRASE", "lifecycle")
    store = Store(tmp_path / "pki")
    preview = store.preview(build_fleet(entries()))
    assert set(preview.hosts) == {"gw", "temp-1", "temp-2"}
    assert not store.path.exists()


def test_a_preview_is_gone_when_the_process_ends(tmp_path):
    script = (
        "import sys; sys.path.insert(0, 'tests/unit')\n"
        "from pathlib import Path\n"
        "from sample import entries\n"
        "from sensormail.fleet import build_fleet\n"
        "from sensormail.store import Store\n"
        f"store = Store(Path({str(tmp_path / 'pki')!r}))\n"
        "store.sync(build_fleet(entries()))\n"
        "print(store.preview(build_fleet(entries()), rotate={'temp-1'})['temp-1'].path)\n"
    )
    env = dict(os.environ, SENSORMAIL_CA_PASSPHRASE="lifecycle")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert ".preview-" in done.stdout
    assert not list((tmp_path / "pki").glob(".preview-*"))


def test_a_lost_registry_is_never_rebuilt_from_the_bundles(store):
    """Rebuilt, it would forget revocations and renumber the fleet."""
    fleet = build_fleet(entries())
    store.sync(fleet, now=NOW)
    store.revoke("temp-1", now=NOW)
    store.registry_path.unlink()
    with pytest.raises(StoreError, match=r"registry\.json is missing beside an existing CA"):
        store.sync(fleet, now=NOW)


def test_a_bundle_the_registry_does_not_name_is_never_adopted(store, tmp_path):
    """A forgotten host's bundle put back (a backup, a crash in forget) brings no old key."""
    fleet = build_fleet(entries())
    first = store.sync(fleet, now=NOW)
    old = first["temp-1"].record
    saved = tmp_path / "saved.pem"
    saved.write_bytes(store.host_file("temp-1").read_bytes())
    store.revoke("temp-1", now=NOW)
    store.sync(build_fleet(entries("gw", "temp-2")), now=NOW)
    store.forget("temp-1", now=NOW)
    store.host_file("temp-1").write_bytes(saved.read_bytes())
    again = store.sync(fleet, now=NOW)["temp-1"].record
    assert again.cert_sha256 != old.cert_sha256 and again.wg_public != old.wg_public
    assert not again.revoked


def test_rotating_a_host_whose_bundle_is_lost_lists_its_old_certificate(store):
    fleet = build_fleet(entries())
    old = store.sync(fleet, now=NOW)["temp-1"].record
    store.host_file("temp-1").unlink()
    with pytest.raises(StoreError, match="is missing; restore it from a backup"):
        store.sync(fleet, now=NOW)
    store.sync(fleet, now=NOW, rotate={"temp-1"})
    assert _crl(store).get_revoked_certificate_by_serial_number(int(old.cert_serial, 16))


def test_a_copied_bundle_never_reaches_a_host(store):
    """temp-1 holding temp-2's keys would let it pass for temp-2 at the gateway."""
    fleet = build_fleet(entries())
    store.sync(fleet, now=NOW)
    store.host_file("temp-1").write_bytes(store.host_file("temp-2").read_bytes())
    creds = store.sync(fleet, now=NOW)  # the fast path reads no bundle...
    with pytest.raises(StoreError, match="does not hold the keys the registry lists"):
        render.sensor_files(fleet, creds, "temp-1")  # ...what is pushed is checked
    assert render.sensor_files(fleet, creds, "temp-2")


def test_a_host_back_after_its_address_was_reused_takes_a_new_one(store):
    both = build_fleet(entries())
    first = store.sync(both, now=NOW)
    later = NOW + dt.timedelta(days=400)  # temp-1's certificate has expired
    newcomer = HostEntry(
        "temp-3", frozenset({"sensors"}), {"sensormail_sender": "temp-3@sensors.fleet.example"}
    )
    store.sync(build_fleet([*entries("gw", "temp-2"), newcomer]), now=later)
    assert store.load_registry()["temp-3"].address == first["temp-1"].record.address
    back = store.sync(build_fleet([*entries(), newcomer]), now=later)
    addresses = {name: host.record.address for name, host in back.hosts.items()}
    assert len(set(addresses.values())) == len(addresses)
    assert addresses["temp-3"] == first["temp-1"].record.address  # the live holder keeps it
    assert addresses["temp-2"] == first["temp-2"].record.address


def test_a_superseded_bundle_put_back_is_never_renewed(store, tmp_path):
    fleet = build_fleet(entries())
    store.sync(fleet, now=NOW)
    old = store.host_file("temp-1").read_bytes()
    store.sync(fleet, now=NOW, rotate={"temp-1"})
    store.host_file("temp-1").write_bytes(old)
    with pytest.raises(StoreError, match="does not hold the keys the registry lists"):
        store.sync(fleet, now=NOW + dt.timedelta(days=250))  # due: would re-certify it
