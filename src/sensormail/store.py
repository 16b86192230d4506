"""The PKI store and fleet registry under `pki/` (or $SENSORMAIL_PKI_DIR).

`Store.sync(fleet)` makes sure every host of the fleet has its credentials and
returns them; it writes only what is missing or due, so a second run changes
no byte. A run's writes land all together or not at all: new files are
written beside the old ones, made durable, listed in a journal, then renamed;
a run that finds a journal finishes those renames first. Secrets are created
0600 inside 0700 directories. A lock keeps two runs apart. See pki/README.md.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime as dt
import fcntl
import ipaddress
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import pki
from .fleet import Fleet, Lifetimes

__all__ = [
    "Credentials",
    "HostCredentials",
    "HostRecord",
    "PendingChanges",
    "Revocation",
    "Store",
    "StoreError",
    "default_dir",
    "write_atomic",
]

REGISTRY_VERSION = 2
ROOT_NAME = "sensormail fleet root CA"
ISSUING_NAME = "sensormail fleet issuing CA"
Progress = Callable[[int, int], None]


class StoreError(RuntimeError):
    """The store cannot be used as it is; the message says what to do."""


class PendingChanges(StoreError):
    """A dry run found credentials to create or renew for these hosts."""

    def __init__(self, message: str, hosts: frozenset[str]):
        super().__init__(message)
        self.hosts = hosts


def default_dir(*hints: Path | None) -> Path:
    """$SENSORMAIL_PKI_DIR, else `pki/` of the project around a hint or the working directory.

    The project is the nearest directory holding `deploy.py` and `inventory/`
    (looking up from each hint, e.g. the deploy file's or the inventory's
    directory, then from the working directory), so every command finds the
    same store wherever it is run from.
    """
    env = os.environ.get("SENSORMAIL_PKI_DIR")
    if env:
        return Path(env).resolve()
    for start in (*hints, Path.cwd()):
        if start is None:
            continue
        start = start.resolve()
        for directory in (start, *start.parents):
            if (directory / "deploy.py").is_file() and (directory / "inventory").is_dir():
                return directory / "pki"
    return Path.cwd().resolve() / "pki"


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 <= value < 1e9:  # also nan and inf
        raise StoreError(f"{name}: not a number of 0 or more: {text!r}")
    return value


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}")


def _address_int(text: str) -> int:
    """An IPv4 address as ipaddress reads it (no leading zeros), a tenth of the cost."""
    if not isinstance(text, str) or not _DOTTED_QUAD.fullmatch(text):
        raise ValueError(f"{text!r} is not an IPv4 address")
    return int.from_bytes(socket.inet_aton(text), "big")


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
    common_name: str = ""
    dns: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    issuer_key_id: str = ""  # the issuing CA that signed the certificate
    revoked: str = ""  # when `sensormail pki revoke` cut the host off ("" = active)

    def due(self, now: dt.datetime, renew_after: float) -> bool:
        start, end = _utc(self.not_before), _utc(self.not_after)
        return now >= start + (end - start) * renew_after


@dataclass
class Revocation:
    serial: str  # hex
    host: str
    at: str
    reason: str  # "revoked" (by the operator) or "superseded" (rotated away)


@dataclass(frozen=True)
class HostCredentials:
    """A host's record and its bundle file (certificate chain, TLS key, WireGuard key)."""

    record: HostRecord
    path: Path

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def revoked(self) -> bool:
        return bool(self.record.revoked)

    @cached_property
    def _parts(self) -> tuple[bytes, bytes, str]:
        parts = _read_bundle(self.path, self.record.name)
        self.check(*parts)
        return parts

    def verify(self) -> None:
        """Read the bundle now; StoreError if it does not match the registry."""
        self._parts  # noqa: B018 (reading it is the check)

    def check(self, chain: bytes, key_pem: bytes, wg_private: str) -> None:
        _matching(self.record, self.path, chain, key_pem, wg_private)

    @property
    def cert_chain_pem(self) -> bytes:
        """The host's certificate followed by the issuing CA's."""
        return self._parts[0]

    def key_pem(self) -> bytes:
        return self._parts[1]

    def wg_private(self) -> str:
        return self._parts[2]


@dataclass(frozen=True)
class Credentials:
    """What the renderer needs: the CA certificates, the CRL and every host's credentials."""

    root_pem: bytes
    hosts: dict[str, HostCredentials]
    crl_pem: bytes = b""
    new: tuple[str, ...] = ()  # hosts given their first credentials by this sync
    reissued: tuple[str, ...] = ()  # hosts whose certificate this sync replaced
    crl_reissued: bool = False

    def __getitem__(self, name: str) -> HostCredentials:
        return self.hosts[name]


# -- durable writes -----------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _close(fd: int) -> None:
    """Close now. Under pyinfra, gevent's os.close defers closing pipes and directories
    to its event loop, which a synchronous run like ours never reaches."""
    os.closerange(fd, fd + 1)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        _close(fd)


def _syncfs(path: Path) -> None:
    """Flush the whole file system holding path: one call instead of one fsync per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if getattr(_libc, "syncfs", None) is None or _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        _close(fd)


def _create(path: Path | str, data: bytes, mode: int) -> None:
    """Create path with its final mode from the first byte on (no chmod afterwards)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:  # left by an interrupted run: never reuse its mode
        os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write one file so that readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _create(tmp, data, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class _Batch:
    """A run's writes, made visible all together or not at all.

    New contents go to `.NAME.new` beside each file. On commit: one syncfs makes
    them durable, a journal listing the renames is written, the renames happen,
    another syncfs, the journal goes. A crash before the journal leaves the old
    state (the .new files are ignored); after it, the next run rolls forward.
    Paths in the journal are relative, so a store may be moved.

    A host bundle that does not exist yet is written in place (`fresh`): no
    registry record names it until the commit, so an interrupted one is
    simply written again by the next run.
    """

    def __init__(self, root: Path):
        self.root = root
        self._root = str(root)
        self._prefix = len(self._root) + 1
        self.moves: list[tuple[str, str]] = []
        self.created: list[str] = []

    @property
    def journal(self) -> Path:
        return self.root / "journal.json"

    def write(self, path: Path, data: bytes, mode: int, fresh: bool = False) -> None:
        self.stage(str(path)[self._prefix :], data, mode, fresh)

    def stage(self, relative: str, data: bytes, mode: int, fresh: bool = False) -> None:
        """`write`, for a path relative to the store (no Path objects: called per host)."""
        root = self._root
        if fresh:
            _create(f"{root}/{relative}", data, mode)
            self.created.append(relative)
            return
        slash = relative.rfind("/") + 1
        tmp = f"{relative[:slash]}.{relative[slash:]}.new"
        _create(f"{root}/{tmp}", data, mode)
        self.moves.append((tmp, relative))

    @property
    def changes(self) -> int:
        return len(self.moves) + len(self.created)

    def discard(self) -> None:
        for tmp in (*(t for t, _ in self.moves), *self.created):
            (self.root / tmp).unlink(missing_ok=True)
        self.moves.clear()
        self.created.clear()

    def commit(self) -> None:
        if not self.changes:
            return
        _syncfs(self.root)  # every new byte durable before the registry names it
        if not self.moves:
            return
        write_atomic(self.journal, json.dumps(self.moves).encode(), 0o600)
        self.roll_forward()

    def roll_forward(self) -> None:
        if not self.journal.exists():
            return
        root = str(self.root)
        for tmp, path in json.loads(self.journal.read_text()):
            try:
                os.replace(f"{root}/{tmp}", f"{root}/{path}")
            except FileNotFoundError:
                pass  # renamed before the interruption
        _syncfs(self.root)
        self.journal.unlink()
        _fsync_dir(self.root)


# -- the store ----------------------------------------------------------------

_PREVIEW = ".preview-"  # + the PID of the dry run using it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


@dataclass(frozen=True)
class _Want:
    """What a host's certificate must say."""

    role: str
    sender: str
    mode: str
    common_name: str
    purpose: str  # a pki.Purpose name (its OID value does not pickle)
    dns: tuple[str, ...]
    ips: tuple[str, ...]


class Store:
    """The on-disk PKI and registry. See pki/README.md for the layout."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path).resolve() if path else default_dir()

    # -- layout --------------------------------------------------------------
    @property
    def registry_path(self) -> Path:
        return self.path / "registry.json"

    @property
    def ca_dir(self) -> Path:
        return self.path / "ca"

    def host_file(self, name: str) -> Path:
        """The host's bundle: certificate chain, TLS key and WireGuard key in one file."""
        return self.path / "hosts" / f"{name}.pem"

    # -- locking -------------------------------------------------------------
    @contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the store's lock; wait for another run up to `timeout` seconds."""
        if timeout is None:
            timeout = _env_number("SENSORMAIL_LOCK_TIMEOUT", 300.0)
        self._mkdir(self.path)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"{self.path}: another sensormail run holds the store lock "
                            f"(waited {timeout:.0f} s); try again when it has finished"
                        ) from None
                    time.sleep(0.1)
            # A run cut off after its journal was written is finished first;
            # what a run cut off before it had staged is thrown away.
            _Batch(self.path).roll_forward()
            for preview in self.path.glob(f"{_PREVIEW}*"):
                if not _alive(int(preview.name[len(_PREVIEW) :] or 0)):
                    shutil.rmtree(preview, ignore_errors=True)  # a killed dry run's keys
            for directory in (self.path, self.ca_dir, self.path / "hosts"):
                if directory.is_dir():
                    for stale in (*directory.glob(".*.new"), *directory.glob(".worker-*.pickle")):
                        stale.unlink()
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
    def passphrase(self, lab: bool, create: bool = True) -> bytes:
        value = os.environ.get("SENSORMAIL_CA_PASSPHRASE", "").strip()
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
                if (self.ca_dir / "root.key").exists():
                    # A new passphrase cannot open the CA that exists: say what can.
                    raise StoreError(
                        f"{self.path}: this CA was made with a passphrase of your own and "
                        "there is no lab-passphrase; set SENSORMAIL_CA_PASSPHRASE or "
                        "SENSORMAIL_CA_PASSPHRASE_FILE"
                    )
                if not create:
                    raise StoreError(f"{self.path}: a new lab store would be created")
                write_atomic(path, secrets.token_urlsafe(24).encode() + b"\n", 0o600)
            return path.read_bytes().strip()
        raise StoreError(
            "the CA key is encrypted at rest: set SENSORMAIL_CA_PASSPHRASE or "
            "SENSORMAIL_CA_PASSPHRASE_FILE"
        )

    # -- CA ------------------------------------------------------------------
    @staticmethod
    def _load_key(path: Path, passphrase: bytes) -> ec.EllipticCurvePrivateKey:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"{path}: {exc.strerror}; restore it from a backup") from None
        encrypted = b"ENCRYPTED" in data
        if not encrypted and os.environ.get("SENSORMAIL_ALLOW_PLAINTEXT_CA") != "1":
            raise StoreError(
                f"{path} is not encrypted; refusing to use it "
                "(set SENSORMAIL_ALLOW_PLAINTEXT_CA=1 to override)"
            )
        try:
            key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
        except ValueError:
            raise StoreError(f"{path}: wrong CA passphrase") from None
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def _ensure_ca(
        self, fleet: Fleet, passphrase: bytes, now: dt.datetime, batch: _Batch
    ) -> tuple[pki.CA, pki.CA]:
        """The root (made once, never renewed here) and the issuing CA (renewed when due)."""
        self._mkdir(self.ca_dir)
        lt = fleet.lifetimes
        root_crt, root_key = self.ca_dir / "root.crt", self.ca_dir / "root.key"
        if root_crt.exists():
            root = pki.CA(_read_cert(root_crt), self._load_key(root_key, passphrase))
            if not pki.key_matches(root.cert, root.key):
                raise StoreError(f"{root_key} does not belong to {root_crt}; restore both")
        elif root_key.exists() or self.registry_path.exists():
            # Never replace a fleet's root silently: every host trusts it.
            raise StoreError(
                f"{root_crt} is missing but the store has a fleet ({root_key} or "
                f"{self.registry_path.name}); restore it from a backup"
            )
        else:
            root = pki.CA.new_root(ROOT_NAME, lt.root_days, now=now)
            batch.write(root_key, pki.Issued(root.cert, root.key).key_pem(passphrase), 0o600)
            batch.write(root_crt, pki.Issued(root.cert, root.key).cert_pem, 0o644)

        crt, key_path = self.ca_dir / "issuing.crt", self.ca_dir / "issuing.key"
        dns = (fleet.gateway.mail_name,)
        networks = (str(fleet.vpn_subnet),)
        if crt.exists() and key_path.exists():
            issuing = pki.CA(_read_cert(crt), self._load_key(key_path, passphrase))
            if self._issuing_current(issuing, root, dns, networks, now, lt.renew_after):
                return root, issuing
        issuing = root.new_intermediate(
            ISSUING_NAME,
            min(lt.issuing_days, (root.cert.not_valid_after_utc - now).days),
            dns=dns,
            networks=networks,
            now=now,
        )
        batch.write(key_path, pki.Issued(issuing.cert, issuing.key).key_pem(passphrase), 0o600)
        batch.write(crt, pki.Issued(issuing.cert, issuing.key).cert_pem, 0o644)
        return root, issuing

    @staticmethod
    def _issuing_current(
        issuing: pki.CA,
        root: pki.CA,
        dns: tuple[str, ...],
        networks: tuple[str, ...],
        now: dt.datetime,
        renew_after: float,
    ) -> bool:
        cert = issuing.cert
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if now >= start + (end - start) * renew_after:
            return False
        if pki.authority_key_id(cert) != root.key_identifier():
            return False
        if not pki.key_matches(cert, issuing.key):
            return False
        try:
            nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return False
        permitted = nc.permitted_subtrees or []
        have_dns = tuple(n.value for n in permitted if isinstance(n, x509.DNSName))
        have_nets = tuple(str(n.value) for n in permitted if isinstance(n, x509.IPAddress))
        return (have_dns, have_nets) == (dns, networks)

    # -- registry ------------------------------------------------------------
    def load(self) -> tuple[dict[str, HostRecord], list[Revocation]]:
        """The registry: host records and the revocation list."""
        if not self.registry_path.exists():
            if (self.ca_dir / "root.crt").exists():
                # Rebuilt from the bundles, it would forget revocations and renumber hosts.
                raise StoreError(
                    f"{self.registry_path} is missing beside an existing CA; restore it from "
                    "a backup"
                )
            return {}, []
        try:
            raw = json.loads(self.registry_path.read_text())
            version = raw.get("version")
            if version not in (1, REGISTRY_VERSION):
                raise StoreError(f"{self.registry_path}: unknown registry version {version}")
            records = {name: HostRecord(**rec) for name, rec in raw["hosts"].items()}
            revoked = [Revocation(**r) for r in raw.get("revoked", [])]
            for gone in revoked:
                int(gone.serial, 16)
            for name, rec in records.items():
                _address_int(rec.address)
                for stamp in (rec.not_before, rec.not_after):
                    if _utc(stamp).tzinfo is None:
                        raise ValueError(f"host {name!r}: {stamp!r} has no time zone")
        except StoreError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StoreError(
                f"{self.registry_path} is damaged ({type(exc).__name__}: {exc}); "
                "restore it from a backup"
            ) from None
        return records, revoked

    def load_registry(self) -> dict[str, HostRecord]:
        return self.load()[0]

    @staticmethod
    def _registry_bytes(
        records: dict[str, HostRecord],
        revoked: list[Revocation],
        lines: dict[str, str] | None = None,
    ) -> bytes:
        """JSON with one line per host: readable, diffable, quick for large fleets.

        `lines` holds the lines workers already serialised, in parallel.
        """
        done = lines or {}
        hosts = ",\n".join(
            done.get(name) or _registry_line(records[name]) for name in sorted(records)
        )
        revocations = ",\n".join(f"  {json.dumps(vars(r))}" for r in revoked)
        return (
            f'{{"version": {REGISTRY_VERSION},\n"hosts": {{\n{hosts}\n}},\n'
            f'"revoked": [\n{revocations}\n]}}\n'
        ).encode()

    # -- sync ----------------------------------------------------------------
    def sync(
        self,
        fleet: Fleet,
        *,
        now: dt.datetime | None = None,
        rotate: frozenset[str] | set[str] = frozenset(),
        progress: Progress | None = None,
        dry_run: bool = False,
    ) -> Credentials:
        """Ensure every credential of the fleet exists and is current.

        With `dry_run`, nothing is changed: if anything would be, StoreError.

        `rotate` names hosts (or "all") whose keys are replaced now; their old
        certificates go on the CRL as superseded, and a revoked host named here
        is re-admitted with new keys.
        """
        now = now or dt.datetime.now(dt.UTC)
        unknown = set(rotate) - set(fleet.hosts) - {"all"}
        if unknown:
            raise StoreError(f"rotate: no such host in the inventory: {', '.join(sorted(unknown))}")
        rotate = set(rotate)
        if dry_run and not (self.ca_dir / "root.crt").exists():
            raise PendingChanges(
                f"{self.path}: no store here yet; a dry run creates none "
                "(`sensormail pki sync -i INVENTORY` makes it)",
                frozenset(fleet.hosts),
            )
        with self.locked():
            batch = _Batch(self.path)
            passphrase = self.passphrase(fleet.lab, create=not dry_run)
            root, issuing = self._ensure_ca(fleet, passphrase, now, batch)
            records, revoked = self.load()
            if "all" in rotate:
                # Every admitted host: a revoked one comes back only by name.
                admitted = {n for n in fleet.hosts if not (n in records and records[n].revoked)}
                rotate = admitted | (rotate - {"all"})
            before = self.registry_path.read_bytes() if self.registry_path.exists() else b""
            addresses = self._allocate(fleet, records, now)
            issuer_id = issuing.key_identifier().hex()
            hosts: dict[str, HostCredentials] = {}
            self._mkdir(self.path / "hosts")
            folder = str(self.path / "hosts")  # 10,000 Path joins would be a tenth of a rerun
            renew_after = fleet.lifetimes.renew_after
            jobs: list[_Job] = []
            for name in fleet.hosts:
                want, rec = self._want(fleet, name, addresses), records.get(name)
                bundle = f"{folder}/{name}.pem"
                hosts[name] = HostCredentials(rec, Path(bundle))  # type: ignore[arg-type]
                if rec and rec.revoked and name not in rotate:
                    continue  # cut off: no renewal, nothing new until rotated
                if (
                    rec
                    and name not in rotate
                    and self._matches(rec, want, addresses[name], issuer_id)
                    and not rec.due(now, renew_after)
                    and os.path.exists(bundle)
                ):
                    continue  # the common case on a rerun: nothing to read or write
                jobs.append(_Job(name, want, addresses[name], name in rotate, rec))
            if dry_run and jobs:
                # Enough to know: the work itself is left to the real run.
                self._pending(batch, jobs)
            context = _Context(self.path, issuing, issuer_id, fleet.lifetimes, now)
            new, reissued = [], []
            lines: dict[str, str] = {}
            listed = {r.serial for r in revoked}
            for done, result in enumerate(_run(context, jobs), 1):
                lines[result.record.name] = result.line
                old = records.get(result.record.name)
                if old is None:
                    new.append(result.record.name)
                elif old.cert_sha256 != result.record.cert_sha256:
                    reissued.append(result.record.name)
                records[result.record.name] = result.record
                hosts[result.record.name] = replace(hosts[result.record.name], record=result.record)
                batch.moves.extend(result.moves)
                batch.created.extend(result.created)
                for gone in result.superseded:
                    if gone.serial not in listed:  # revoked, then rotated: listed once
                        listed.add(gone.serial)
                        revoked.append(gone)
                if progress and (done % 500 == 0 or done == len(jobs)):
                    progress(done, len(jobs))
            self._check_unique(records)
            staged = batch.changes
            crl = self._ensure_crl(issuing, revoked, fleet, now, batch)
            crl_reissued = batch.changes > staged
            after = self._registry_bytes(records, revoked, lines)
            if after != before:
                batch.write(self.registry_path, after, 0o644)
            if dry_run and batch.changes:
                self._pending(batch, jobs)
            batch.commit()
            return Credentials(
                root.cert.public_bytes(serialization.Encoding.PEM),
                hosts,
                crl.public_bytes(serialization.Encoding.PEM),
                tuple(new),
                tuple(reissued),
                crl_reissued,
            )

    def preview(
        self, fleet: Fleet, *, rotate: frozenset[str] | set[str] = frozenset()
    ) -> Credentials:
        """What `sync` would make, made in a throwaway copy: this store is left as it is.

        For a dry run that shows what a deploy would change. The copy is hard
        links in `.preview-PID/` inside the store (nothing here is ever written
        in place, so the links are never written through); the keys it makes
        are never used and go with it when the process exits. With no store
        yet, the preview is a new store in a private temporary directory.
        """
        if not self.path.is_dir():
            fresh = Path(tempfile.mkdtemp(prefix="sensormail-preview-"))
            atexit.register(shutil.rmtree, fresh, ignore_errors=True)
            return Store(fresh / "pki").sync(fleet, rotate=rotate)
        copy = self.path / f"{_PREVIEW}{os.getpid()}"
        shutil.rmtree(copy, ignore_errors=True)
        atexit.register(shutil.rmtree, copy, ignore_errors=True)
        copy.mkdir(mode=0o700)
        with self.locked():
            for directory, folders, files in os.walk(self.path):
                here = Path(directory)
                folders[:] = [f for f in folders if not f.startswith(_PREVIEW)]
                target = copy / here.relative_to(self.path)
                target.mkdir(mode=0o700, exist_ok=True)
                for name in files:
                    if name != ".lock":
                        os.link(here / name, target / name)
        return Store(copy).sync(fleet, rotate=rotate)

    def _pending(self, batch: _Batch, jobs: list[_Job]) -> None:
        batch.discard()
        raise PendingChanges(
            f"{self.path}: the store would change ({len(jobs)} host(s) with new or renewed "
            "credentials, or the CA or CRL); a dry run changes nothing: apply them first with "
            "`sensormail pki sync -i INVENTORY`",
            frozenset(job.name for job in jobs),
        )

    @staticmethod
    def _want(fleet: Fleet, name: str, addresses: dict[str, str]) -> _Want:
        if name == fleet.gateway.name:
            return _Want(
                "gateway", "", "cert", fleet.gateway.mail_name, pki.Purpose.SERVER.name,
                (fleet.gateway.mail_name,), (addresses[name],),
            )  # fmt: skip
        sensor = fleet.sensor(name)
        return _Want(
            "sensor", sensor.sender, sensor.mode.value, name, pki.Purpose.CLIENT.name, (), ()
        )

    def _allocate(
        self, fleet: Fleet, records: dict[str, HostRecord], now: dt.datetime
    ) -> dict[str, str]:
        """WireGuard addresses: kept once given; the gateway takes the first.

        New hosts take the lowest address no record holds, so order in the
        inventory never matters. A host gone from the inventory (or revoked)
        keeps its address until its certificate has expired.
        """
        subnet = fleet.vpn_subnet
        # Host addresses as integers: a /16 has 65,534 of them, objects would be slow.
        first_int = int(subnet.network_address) + 1
        last_int = int(subnet.broadcast_address) - 1
        in_fleet = set(fleet.hosts)
        taken: dict[str, str] = {}
        result: dict[str, str] = {}
        expired = {name for name, rec in records.items() if _utc(rec.not_after) <= now}
        for name in sorted(records, key=lambda n: (n in expired, n)):  # live records first
            rec = records[name]
            if name in expired and name not in in_fleet:
                continue  # expired and gone: its address may be given again
            if rec.address in taken:
                if name in expired:
                    continue  # back after its address went to another host: takes a new one
                raise StoreError(
                    f"host {name!r}, field 'address': {rec.address} is also registered to "
                    f"{taken[rec.address]!r}; fix {self.registry_path}"
                )
            taken[rec.address] = name
            if name in in_fleet:
                if not first_int <= _address_int(rec.address) <= last_int:
                    raise StoreError(
                        f"host {name!r}, field 'sensormail_vpn_subnet': its registered address "
                        f"{rec.address} is outside {subnet}; renumbering is not supported"
                    )
                result[name] = rec.address
        first = str(ipaddress.IPv4Address(first_int))
        if fleet.gateway.name not in result:
            if first in taken:
                raise StoreError(
                    f"host {fleet.gateway.name!r}: the gateway address {first} is held by "
                    f"{taken[first]!r}"
                )
            result[fleet.gateway.name] = first
            taken[first] = fleet.gateway.name
        new = sorted(n for n in in_fleet if n not in result)
        if new:
            used = {int(ipaddress.IPv4Address(a)) for a in taken}
            candidate = first_int + 1
            for name in new:
                while candidate in used:
                    candidate += 1
                if candidate > last_int:
                    raise StoreError(
                        f"host {name!r}, field 'sensormail_vpn_subnet': no free address in "
                        f"{subnet} (addresses of removed hosts are held until their "
                        "certificates expire)"
                    )
                result[name] = str(ipaddress.IPv4Address(candidate))
                candidate += 1
        return result

    @staticmethod
    def _matches(rec: HostRecord, want: _Want, address: str, issuer_id: str) -> bool:
        return (
            rec.role == want.role
            and rec.sender == want.sender
            and rec.mode == want.mode
            and rec.address == address
            and rec.common_name == want.common_name
            and tuple(rec.dns) == want.dns
            and tuple(rec.ips) == want.ips
            and rec.issuer_key_id == issuer_id
        )

    @staticmethod
    def _check_unique(records: dict[str, HostRecord]) -> None:
        """No two hosts may share a WireGuard key (a copied host directory would)."""
        seen: dict[str, str] = {}
        for name in sorted(records):
            key = records[name].wg_public
            if key in seen:
                raise StoreError(
                    f"host {name!r}, field 'wg_public': the same WireGuard key as "
                    f"{seen[key]!r}; rotate one of them (--data rotate={name})"
                )
            seen[key] = name

    def _ensure_crl(
        self,
        issuing: pki.CA,
        revoked: list[Revocation],
        fleet: Fleet,
        now: dt.datetime,
        batch: _Batch,
    ) -> x509.CertificateRevocationList:
        """The issuing CA's CRL; re-issued when its list changed or it is past renewal."""
        path = self.ca_dir / "crl.pem"
        want = sorted({int(r.serial, 16) for r in revoked})
        number = 0
        if path.exists():
            try:
                crl = x509.load_pem_x509_crl(path.read_bytes())
                number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            except (ValueError, x509.ExtensionNotFound):
                raise StoreError(f"{path} is damaged; delete it to have it re-issued") from None
            last, nxt = crl.last_update_utc, crl.next_update_utc
            assert nxt is not None
            if (
                sorted(r.serial_number for r in crl) == want
                and crl.is_signature_valid(issuing.key.public_key())
                and now < last + (nxt - last) * fleet.lifetimes.renew_after
            ):
                return crl
        when: dict[int, dt.datetime] = {}
        for r in revoked:  # the first revocation of a serial is its date
            when.setdefault(int(r.serial, 16), _utc(r.at))
        crl = issuing.crl(
            [(s, when[s]) for s in want], fleet.lifetimes.crl_days, number=number + 1, now=now
        )
        batch.write(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return crl

    # -- revocation ------------------------------------------------------------
    def revoke(self, name: str, now: dt.datetime | None = None) -> HostRecord:
        """Cut a sensor off: recorded now, applied to the CRL and every layer on the next run."""
        now = now or dt.datetime.now(dt.UTC)
        with self.locked():
            records, revoked = self.load()
            rec = records.get(name)
            if rec is None:
                known = ", ".join(sorted(records)) or "none"
                raise StoreError(f"host {name!r}: not in the registry (registered: {known})")
            if rec.role == "gateway":
                raise StoreError(
                    f"host {name!r}: the gateway cannot be revoked; rotate its keys instead "
                    f"(--data rotate={name})"
                )
            if rec.revoked:
                return rec
            rec.revoked = now.isoformat()
            revoked.append(Revocation(rec.cert_serial, name, rec.revoked, "revoked"))
            batch = _Batch(self.path)
            batch.write(self.registry_path, self._registry_bytes(records, revoked), 0o644)
            batch.commit()
            return rec

    def forget(self, name: str, now: dt.datetime | None = None) -> None:
        """Drop a host from the registry for good, freeing its name and address.

        Only a host whose credentials can no longer be used: revoked (its
        certificate on the CRL) or expired. Its bundle is deleted with it.
        """
        now = now or dt.datetime.now(dt.UTC)
        with self.locked():
            records, revoked = self.load()
            rec = records.get(name)
            if rec is None:
                raise StoreError(f"host {name!r}: not in the registry {self.registry_path}")
            if not rec.revoked and _utc(rec.not_after) > now:
                raise StoreError(
                    f"host {name!r}: its certificate is valid until {rec.not_after[:10]}; "
                    f"revoke it first (sensormail pki revoke {name})"
                )
            del records[name]
            batch = _Batch(self.path)
            batch.write(self.registry_path, self._registry_bytes(records, revoked), 0o644)
            batch.commit()
            self.host_file(name).unlink(missing_ok=True)  # its keys are dead: no use in keeping


# -- per-host work (in worker processes for large runs) -----------------------


@dataclass(frozen=True)
class _Job:
    name: str
    want: _Want
    address: str
    rotate: bool
    record: HostRecord | None  # what the registry knows of the host: its bundle must exist

    @property
    def registered(self) -> bool:
        return self.record is not None


@dataclass(frozen=True)
class _Context:
    """What every host's work needs; inherited by forked workers, never pickled."""

    root: Path
    issuing: pki.CA
    issuer_id: str
    lifetimes: Lifetimes
    now: dt.datetime

    @cached_property
    def issuing_pem(self) -> bytes:
        return self.issuing.cert.public_bytes(serialization.Encoding.PEM)

    @cached_property
    def cert_days(self) -> int:
        """A leaf's lifetime: never beyond its issuer's, a chain is only as valid as its
        shortest link."""
        left = (self.issuing.cert.not_valid_after_utc - self.now).days
        return min(self.lifetimes.cert_days, left)


@dataclass(frozen=True)
class _Result:
    record: HostRecord
    line: str  # the record as the registry holds it, serialised by the worker
    moves: list[tuple[str, str]]
    created: list[str]
    superseded: list[Revocation]


_context: _Context | None = None
# Below this many hosts to (re)issue, forking workers costs more than it saves.
PARALLEL_FROM = 1000


def _run(context: _Context, jobs: list[_Job]) -> Iterator[_Result]:
    """Each job's result; across CPU cores when there are many.

    Plain fork, no executor: pyinfra's gevent patches threading, which the
    standard pools rely on. The parent and its children draw chunks of jobs
    from one queue until it is empty, so a core the host slows down just does
    fewer; each child stages its files and leaves its results in a file.
    """
    global _context
    # More than 64 would gain nothing and could overfill the queue's pipe.
    workers = min(int(_env_number("SENSORMAIL_WORKERS", os.cpu_count() or 1)), 64)
    _context = context
    queue = -1
    try:
        if len(jobs) < PARALLEL_FROM or workers < 2:
            yield from map(_work, jobs)
            return
        queue, chunk = _queue(len(jobs), workers)
        children: dict[int, Path] = {}
        for number in range(1, workers):
            out = context.root / f".worker-{number}.pickle"
            pid = os.fork()
            if pid == 0:  # the child: work, write results, leave without cleanup
                status = 1
                try:
                    try:
                        results: object = [_work(j) for j in _draw(queue, chunk, jobs)]
                    except StoreError as exc:
                        results = exc  # the operator's to resolve: reported by the parent
                    _create(out, pickle.dumps(results), 0o600)
                    status = 0
                finally:
                    os._exit(status)
            children[pid] = out
        yield from map(_work, _draw(queue, chunk, jobs))
        failed = []
        for pid, out in children.items():
            _, status = os.waitpid(pid, 0)
            if status != 0 or not out.exists():
                failed.append(pid)
                continue
            results = pickle.loads(out.read_bytes())
            out.unlink()
            if isinstance(results, StoreError):
                raise results
            yield from results
        if failed:
            raise StoreError(f"{len(failed)} worker process(es) failed; nothing was changed")
    finally:
        _context = None
        if queue >= 0:
            _close(queue)


_DONE = b"\xff\xff\xff\xff"  # one per worker, after every chunk: stop drawing


def _queue(count: int, workers: int) -> tuple[int, int]:
    """A pipe holding the start of every chunk of jobs, and the chunk size.

    Every token is written before any worker reads, and a pipe hands each
    read of 4 bytes one whole token: workers share it without a lock.
    """
    chunk = max(32, -(-count // 4096))  # at most 16 KiB of tokens: below any pipe's capacity
    read, write = os.pipe()
    try:
        starts = b"".join(s.to_bytes(4, "big") for s in range(0, count, chunk))
        os.write(write, starts + _DONE * workers)
    finally:
        _close(write)
    return read, chunk


def _draw(queue: int, chunk: int, jobs: list[_Job]) -> Iterator[_Job]:
    while (token := os.read(queue, 4)) not in (_DONE, b""):
        start = int.from_bytes(token, "big")
        yield from jobs[start : start + chunk]


def _work(job: _Job) -> _Result:
    """Make one host's credentials current; a changed bundle is staged in the batch."""
    ctx = _context
    assert ctx is not None
    batch = _Batch(ctx.root)
    relative = f"hosts/{job.name}.pem"
    path = f"{ctx.root}/{relative}"  # a str: a Path per host costs more than it helps
    want, now, lifetimes = job.want, ctx.now, ctx.lifetimes
    superseded = []

    cert = key = None
    # A bundle the registry never named is a leftover (an interrupted run, a
    # forgotten host, a restored file): never adopted, its keys may be revoked.
    fresh = job.record is None or not os.path.exists(path)
    if job.registered and not job.rotate and fresh:
        raise StoreError(
            f"host {job.name!r}: {path} is missing; restore it from a backup, or give the "
            f"host new keys (--data rotate={job.name}, or pki sync --rotate {job.name})"
        )
    if not fresh and not job.rotate:
        # Keys are kept unless rotating: a registered host's bundle that cannot
        # be read is an error to resolve, never a reason to make new keys silently.
        assert job.record is not None
        chain, key_pem, wg_private = _read_bundle(Path(path), job.name)
        cert, key = _matching(job.record, path, chain, key_pem, wg_private)
        wg_public = job.record.wg_public  # _matching checked it against the private key
    else:
        wg = pki.wireguard_keys()
        wg_private, wg_public = wg.private, wg.public
    key = key or pki.new_key()
    # A certificate is kept only with its own key, from the current issuing CA,
    # naming what it should, and not yet due.
    keep = (
        cert is not None
        and not job.rotate
        and pki.key_matches(cert, key)
        and pki.authority_key_id(cert) == ctx.issuing.key_identifier()
        and _names(cert) == (want.common_name, want.dns, want.ips)
        and not _cert_due(cert, now, lifetimes.renew_after)
    )
    if not keep:
        old = job.record
        if job.rotate and old is not None and _utc(old.not_after) > now:
            # From the registry, which the gateway trusts: right even if the bundle is lost.
            superseded.append(Revocation(old.cert_serial, job.name, now.isoformat(), "superseded"))
        days = ctx.cert_days
        if days < 1:
            raise StoreError(
                "the issuing CA expires within a day and the root cannot renew it: "
                "the fleet needs a new root"
            )
        issued = ctx.issuing.issue(
            want.common_name, pki.Purpose[want.purpose], days,
            dns=want.dns, ips=want.ips, key=key, now=now,
        )  # fmt: skip
        chain = issued.cert_pem + ctx.issuing_pem
        cert = issued.cert
        # Key and certificate change together, in one file: they cannot be torn apart.
        batch.stage(relative, pki.bundle(chain, pki.private_pem(key), wg_private), 0o600, fresh)
    assert cert is not None
    record = HostRecord(
        name=job.name,
        role=want.role,
        address=job.address,
        wg_public=wg_public,
        cert_serial=format(cert.serial_number, "x"),
        cert_sha256=pki.fingerprint(cert),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        sender=want.sender,
        mode=want.mode,
        common_name=want.common_name,
        dns=list(want.dns),
        ips=list(want.ips),
        issuer_key_id=ctx.issuer_id,
        revoked="",
    )
    return _Result(record, _registry_line(record), batch.moves, batch.created, superseded)


def _registry_line(record: HostRecord) -> str:
    return f"  {json.dumps(record.name)}: {json.dumps(vars(record))}"


def _matching(
    record: HostRecord, path: Path | str, chain: bytes, key_pem: bytes, wg_private: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A bundle's certificate and key, if it holds what the registry lists (which the
    gateway's maps come from): a copied, swapped or superseded bundle is never renewed
    nor pushed to a host."""
    try:
        cert = pki.load_cert(chain)
        key = serialization.load_pem_private_key(key_pem, None)
        wg_public = pki.wireguard_public(wg_private)
    except ValueError as exc:
        raise StoreError(
            f"host {record.name!r}: {path} is damaged ({exc}); restore it from a backup, "
            f"or give the host new keys (--data rotate={record.name})"
        ) from None
    if (
        pki.fingerprint(cert) != record.cert_sha256
        or not isinstance(key, ec.EllipticCurvePrivateKey)
        or not pki.key_matches(cert, key)
        or wg_public != record.wg_public
    ):
        raise StoreError(
            f"host {record.name!r}: {path} does not hold the keys the registry lists for it; "
            f"restore it from a backup, or give the host new keys (--data rotate={record.name})"
        )
    return cert, key


def _read_bundle(path: Path, name: str) -> tuple[bytes, bytes, str]:
    try:
        return pki.unbundle(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"host {name!r}: {path} is unusable ({exc}); restore it from a backup, "
            f"or give the host new keys (--data rotate={name})"
        ) from None


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return pki.load_cert(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is unreadable ({exc}); restore it from a backup") from None


def _cert_due(cert: x509.Certificate, now: dt.datetime, renew_after: float) -> bool:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= start + (end - start) * renew_after


def _names(cert: x509.Certificate) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    cn = cert.subject.get_attributes_for_oid(pki.NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(i) for i in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    return (str(cn[0].value) if cn else "", dns, ips)
