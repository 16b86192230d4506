"""The store under concurrency and crashes: a lock, and all-or-nothing runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sample import entries

from sensormail import pki
from sensormail.fleet import build_fleet
from sensormail.store import HostCredentials, Store, StoreError

# Run in a child process: sync with rotation of every key, the process killed
# (os._exit, no cleanup) when it reaches rename number CRASH_AT.
CRASHING_SYNC = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from sample import entries
    from sensormail.fleet import build_fleet
    from sensormail.store import Store

    import sensormail.store as store_module

    crash_at, where = int(sys.argv[1]), sys.argv[3]
    count = [0]

    def crashing(real):
        def call(*args):
            count[0] += 1
            if count[0] == crash_at:
                os._exit(137)
            return real(*args)
        return call

    if where == "rename":  # a rotation of every key, killed at its Nth rename
        os.replace = crashing(os.replace)
        rotate = {{"all"}}
    else:  # a first sync, killed as it writes its Nth new file
        store_module._create = crashing(store_module._create)
        rotate = set()
    Store(sys.argv[2]).sync(build_fleet(entries()), rotate=rotate)
    print("finished without crashing")
    """
).format(tests=str(Path(__file__).parent))


@pytest.fixture
def passphrase(monkeypatch):
    monkeypatch.setenv("SENSORMAIL_CA_PASSPHRASE", "crash")


def _state(store: Store) -> dict[str, tuple[str, str]]:
    """Per host (cert fingerprint, WireGuard public key), checked against the registry."""
    records = store.load_registry()
    state = {}
    for name, rec in records.items():
        host = HostCredentials(rec, store.host_file(name))
        cert = pki.load_cert(host.cert_chain_pem)
        key = serialization.load_pem_private_key(host.key_pem(), None)
        assert pki.key_matches(cert, key), f"{name}: key and certificate torn apart"
        assert pki.fingerprint(cert) == rec.cert_sha256, f"{name}: registry out of date"
        wg_public = pki.wireguard_public(host.wg_private())
        assert wg_public == rec.wg_public, f"{name}: WireGuard key out of date"
        state[name] = (rec.cert_sha256, rec.wg_public)
    return state


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4, 5, 6])
def test_a_crash_leaves_the_old_state_or_the_new_one(tmp_path, passphrase, crash_at):
    store = Store(tmp_path / "pki")
    fleet = build_fleet(entries())
    store.sync(fleet)
    old = _state(store)
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_SYNC, str(crash_at), str(store.path), "rename"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert child.returncode == 137, child.stdout + child.stderr
    store.sync(fleet)  # the next run (it finishes an interrupted commit first)
    new = _state(store)
    assert not (store.path / "journal.json").exists()
    if crash_at == 1:  # died writing the journal: nothing of the run is visible
        assert new == old
    else:  # the journal was durable: the whole rotation landed
        assert all(new[name] != old[name] for name in old)


@pytest.mark.parametrize("crash_at", [1, 4, 5, 6, 7, 9, 10])
def test_a_crash_during_the_first_run_leaves_a_store_the_next_run_completes(
    tmp_path, passphrase, crash_at
):
    store = Store(tmp_path / "pki")
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_SYNC, str(crash_at), str(store.path), "create"],
        capture_output=True,
        text=True,
    )
    assert child.returncode == 137, child.stdout + child.stderr
    assert not store.registry_path.exists()  # nothing was committed
    store.sync(build_fleet(entries()))
    assert len(_state(store)) == 3
    assert not list(store.path.rglob("*.new"))


def test_a_second_run_waits_for_the_lock_then_gives_up(tmp_path, passphrase, monkeypatch):
    store = Store(tmp_path / "pki")
    store.sync(build_fleet(entries()))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
         str(store.path / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("SENSORMAIL_LOCK_TIMEOUT", "0.5")
        started = time.monotonic()
        with pytest.raises(StoreError, match="another sensormail run holds the store lock"):
            store.sync(build_fleet(entries()))
        assert time.monotonic() - started >= 0.5
    finally:
        holder.kill()
        holder.wait()
    store.sync(build_fleet(entries()))  # free again once the other run is gone
