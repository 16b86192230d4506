"""The PKI store and fleet registry under `pki/` (or $SENSORMAIL_PKI_DIR).

`Store.sync(fleet)` makes sure every host of the fleet has its credentials
and returns them; it writes only what is missing or due, so a second run
changes no byte. Writes are atomic (temp file, fsync, rename) and secrets are
created 0600 inside 0700 directories. A lock keeps two runs apart.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.x509 import DNSName, IPAddress, SubjectAlternativeName

from . import pki
from .fleet import Fleet

__all__ = [
    "Credentials",
    "HostCredentials",
    "HostRecord",
    "Store",
    "StoreError",
    "default_dir",
]

ROOT_DAYS = 3650
ISSUING_DAYS = 1825
LEAF_DAYS = 365
# A certificate is re-issued once this fraction of its lifetime has passed.
RENEW_AFTER = 2 / 3
REGISTRY_VERSION = 1


class StoreError(RuntimeError):
    """The store cannot be used as it is; the message says what to do."""


def default_dir() -> Path:
    return Path(os.environ.get("SENSORMAIL_PKI_DIR", "pki")).resolve()


@dataclass
class HostRecord:
    """One host's line in the registry: everything but its secrets."""

    name: str
    role: str  # "gateway" or "sensor"
    address: str  # WireGuard address
    wg_public: str
    cert_serial: str
    cert_sha256: str
    not_before: str
    not_after: str
    sender: str = ""
    mode: str = "cert"


@dataclass(frozen=True)
class HostCredentials:
    record: HostRecord
    cert_chain_pem: bytes  # leaf + issuing CA
    key_path: Path
    wg_private_path: Path

    @property
    def name(self) -> str:
        return self.record.name

    def key_pem(self) -> bytes:
        return self.key_path.read_bytes()

    def wg_private(self) -> str:
        return self.wg_private_path.read_text().strip()


@dataclass(frozen=True)
class Credentials:
    """What the renderer needs: the root certificate and every host's credentials."""

    root_pem: bytes
    hosts: dict[str, HostCredentials]

    def __getitem__(self, name: str) -> HostCredentials:
        return self.hosts[name]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write data so that readers see the old file or the new one, never half.

    The temp file is created with its final mode: a secret is never readable
    by others, not even for a moment.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class Store:
    """The on-disk PKI and registry. See pki/README.md for the layout."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path).resolve() if path else default_dir()

    # -- layout --------------------------------------------------------------
    @property
    def registry_path(self) -> Path:
        return self.path / "registry.json"

    def host_dir(self, name: str) -> Path:
        return self.path / "hosts" / name

    # -- locking -------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        self._mkdir(self.path)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"{self.path}: another sensormail run holds the store lock; wait for it"
                ) from None
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _mkdir(path: Path) -> None:
        # parents=True would give missing parents the default mode: make each 0700.
        for directory in reversed([path, *path.parents]):
            if not directory.exists():
                directory.mkdir(mode=0o700, exist_ok=True)

    # -- CA passphrase -------------------------------------------------------
    def passphrase(self, lab: bool) -> bytes:
        value = os.environ.get("SENSORMAIL_CA_PASSPHRASE")
        if value:
            return value.encode()
        file = os.environ.get("SENSORMAIL_CA_PASSPHRASE_FILE")
        if file:
            try:
                data = Path(file).read_bytes().strip()
            except OSError as exc:
                raise StoreError(
                    f"SENSORMAIL_CA_PASSPHRASE_FILE: cannot read {file}: {exc}"
                ) from None
            if not data:
                raise StoreError(f"SENSORMAIL_CA_PASSPHRASE_FILE: {file} is empty")
            return data
        if lab:
            # Lab only: the passphrase lives next to the key it protects.
            path = self.path / "lab-passphrase"
            if not path.exists():
                write_atomic(path, secrets.token_urlsafe(24).encode() + b"\n", 0o600)
            return path.read_bytes().strip()
        raise StoreError(
            "the CA key is encrypted at rest: set SENSORMAIL_CA_PASSPHRASE or "
            "SENSORMAIL_CA_PASSPHRASE_FILE"
        )

    # -- CA ------------------------------------------------------------------
    def _load_or_create_ca(self, passphrase: bytes) -> tuple[pki.CA, pki.CA]:
        ca_dir = self.path / "ca"
        self._mkdir(ca_dir)
        root_crt, root_key = ca_dir / "root.crt", ca_dir / "root.key"
        issuing_crt, issuing_key = ca_dir / "issuing.crt", ca_dir / "issuing.key"
        if not root_crt.exists():
            root = pki.CA.new_root("sensormail fleet root CA", ROOT_DAYS)
            write_atomic(root_key, pki.Issued(root.cert, root.key).key_pem(passphrase), 0o600)
            write_atomic(root_crt, pki.Issued(root.cert, root.key).cert_pem, 0o644)
        root = pki.CA(pki.load_cert(root_crt.read_bytes()), self._load_key(root_key, passphrase))
        if not issuing_crt.exists():
            issuing = root.new_intermediate("sensormail fleet issuing CA", ISSUING_DAYS)
            write_atomic(
                issuing_key, pki.Issued(issuing.cert, issuing.key).key_pem(passphrase), 0o600
            )
            write_atomic(issuing_crt, pki.Issued(issuing.cert, issuing.key).cert_pem, 0o644)
        issuing = pki.CA(
            pki.load_cert(issuing_crt.read_bytes()), self._load_key(issuing_key, passphrase)
        )
        return root, issuing

    @staticmethod
    def _load_key(path: Path, passphrase: bytes):
        data = path.read_bytes()
        if b"ENCRYPTED" not in data and os.environ.get("SENSORMAIL_ALLOW_PLAINTEXT_CA") != "1":
            raise StoreError(
                f"{path} is not encrypted; refusing to use it "
                "(set SENSORMAIL_ALLOW_PLAINTEXT_CA=1 to override)"
            )
        try:
            return serialization.load_pem_private_key(
                data, passphrase if b"ENCRYPTED" in data else None
            )
        except ValueError:
            raise StoreError(f"{path}: wrong CA passphrase") from None

    # -- registry ------------------------------------------------------------
    def load_registry(self) -> dict[str, HostRecord]:
        if not self.registry_path.exists():
            return {}
        raw = json.loads(self.registry_path.read_text())
        if raw.get("version") != REGISTRY_VERSION:
            raise StoreError(f"{self.registry_path}: unknown registry version {raw.get('version')}")
        return {name: HostRecord(**rec) for name, rec in raw["hosts"].items()}

    def _save_registry(self, records: dict[str, HostRecord]) -> None:
        doc = {
            "version": REGISTRY_VERSION,
            "hosts": {name: asdict(records[name]) for name in sorted(records)},
        }
        write_atomic(self.registry_path, (json.dumps(doc, indent=2) + "\n").encode(), 0o644)

    # -- sync ----------------------------------------------------------------
    def sync(self, fleet: Fleet, now: dt.datetime | None = None) -> Credentials:
        """Ensure every credential of the fleet exists and is current."""
        now = now or dt.datetime.now(dt.UTC)
        with self.locked():
            root, issuing = self._load_or_create_ca(self.passphrase(fleet.lab))
            records = self.load_registry()
            before = {name: asdict(rec) for name, rec in records.items()}
            addresses = self._allocate(fleet, records)
            hosts = {}
            gateway_addr = addresses[fleet.gateway.name]
            for name in fleet.hosts:
                if name == fleet.gateway.name:
                    role, sender, mode = "gateway", "", "cert"
                    dns, ips, purpose = (
                        (fleet.gateway.mail_name,),
                        (gateway_addr,),
                        pki.Purpose.SERVER,
                    )
                    common_name = fleet.gateway.mail_name
                else:
                    sensor = fleet.sensor(name)
                    role, sender, mode = "sensor", sensor.sender, sensor.mode.value
                    dns, ips, purpose = (), (), pki.Purpose.CLIENT
                    common_name = name
                hosts[name] = self._ensure_host(
                    name, role, sender, mode, addresses[name], issuing,
                    common_name, purpose, dns, ips, records, now,
                )  # fmt: skip
            if {n: asdict(r) for n, r in records.items()} != before:
                self._save_registry(records)
            return Credentials(root.cert.public_bytes(serialization.Encoding.PEM), hosts)

    def _allocate(self, fleet: Fleet, records: dict[str, HostRecord]) -> dict[str, str]:
        """WireGuard addresses: kept once given; the gateway takes the first.

        New hosts take the lowest address no record holds, so order in the
        inventory never matters, and a removed sensor's address is not handed
        out again while its record (and its credentials) exist.
        """
        subnet = fleet.vpn_subnet
        taken = {rec.address: name for name, rec in records.items()}
        result = {}
        for name in fleet.hosts:
            if name in records:
                addr = ipaddress.IPv4Address(records[name].address)
                if addr not in subnet:
                    raise StoreError(
                        f"host {name!r}, field 'sensormail_vpn_subnet': its registered address "
                        f"{addr} is outside {subnet}; renumbering is not supported"
                    )
                result[name] = str(addr)
        hosts_iter = subnet.hosts()
        first = str(next(hosts_iter))
        if fleet.gateway.name not in result:
            if first in taken and taken[first] != fleet.gateway.name:
                raise StoreError(
                    f"host {fleet.gateway.name!r}: gateway address {first} is held by "
                    f"{taken[first]!r}"
                )
            result[fleet.gateway.name] = first
            taken[first] = fleet.gateway.name
        free = (str(a) for a in hosts_iter if str(a) not in taken)
        for name in sorted(fleet.hosts):
            if name not in result:
                try:
                    result[name] = next(free)
                except StopIteration:
                    raise StoreError(
                        f"host {name!r}, field 'sensormail_vpn_subnet': no free address in {subnet}"
                    ) from None
        return result

    def _ensure_host(
        self,
        name: str,
        role: str,
        sender: str,
        mode: str,
        address: str,
        issuing: pki.CA,
        common_name: str,
        purpose: pki.Purpose,
        dns: tuple[str, ...],
        ips: tuple[str, ...],
        records: dict[str, HostRecord],
        now: dt.datetime,
    ) -> HostCredentials:
        directory = self.host_dir(name)
        self._mkdir(directory)
        wg_key, cert_path, key_path = (
            directory / "wg.key",
            directory / "cert.pem",
            directory / "key.pem",
        )
        if not wg_key.exists():
            write_atomic(wg_key, pki.wireguard_keys().private.encode() + b"\n", 0o600)
        wg_public = pki.wireguard_public(wg_key.read_text().strip())

        cert = pki.load_cert(cert_path.read_bytes()) if cert_path.exists() else None
        if (
            cert is None
            or not key_path.exists()
            or self._due(cert, common_name, dns, ips, issuing, now)
        ):
            key = (
                serialization.load_pem_private_key(key_path.read_bytes(), None)
                if key_path.exists()
                else pki.new_key()
            )
            issued = issuing.issue(
                common_name, purpose, LEAF_DAYS, dns=dns, ips=ips, key=key, now=now
            )
            if not key_path.exists():
                write_atomic(key_path, issued.key_pem(), 0o600)
            chain = issued.cert_pem + issuing.cert.public_bytes(serialization.Encoding.PEM)
            write_atomic(cert_path, chain, 0o644)
            cert = issued.cert
        records[name] = HostRecord(
            name=name,
            role=role,
            address=address,
            wg_public=wg_public,
            cert_serial=format(cert.serial_number, "x"),
            cert_sha256=pki.fingerprint(cert),
            not_before=cert.not_valid_before_utc.isoformat(),
            not_after=cert.not_valid_after_utc.isoformat(),
            sender=sender,
            mode=mode,
        )
        return HostCredentials(records[name], cert_path.read_bytes(), key_path, wg_key)

    @staticmethod
    def _due(cert, common_name, dns, ips, issuing: pki.CA, now: dt.datetime) -> bool:
        """Re-issue when expiring, issued by another CA, or naming the wrong host."""
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if now >= start + (end - start) * RENEW_AFTER:
            return True
        if cert.issuer != issuing.cert.subject:
            return True
        cn = cert.subject.get_attributes_for_oid(pki.NameOID.COMMON_NAME)
        if not cn or cn[0].value != common_name:
            return True
        try:
            san = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
            have = (tuple(san.get_values_for_type(DNSName)),
                    tuple(str(i) for i in san.get_values_for_type(IPAddress)))  # fmt: skip
        except Exception:
            have = ((), ())
        return have != (tuple(dns), tuple(ips))
