"""Certificates and keys, built with cryptography's builders.

A `CA` issues; what it issues are value objects. Nothing here touches the
disk: the store (`store.py`) decides what to keep and where.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA",
    "Issued",
    "Purpose",
    "WireGuardKeys",
    "authority_key_id",
    "bundle",
    "fingerprint",
    "key_matches",
    "load_cert",
    "new_key",
    "private_pem",
    "unbundle",
    "wireguard_keys",
]

# Certificates start a little in the past so a sensor whose clock lags
# slightly still accepts the gateway (and vice versa).
BACKDATE = dt.timedelta(minutes=5)
ORGANIZATION = "sensormail fleet"


class Purpose(Enum):
    """What a leaf certificate is for; it decides the extended key usage."""

    CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
    SERVER = ExtendedKeyUsageOID.SERVER_AUTH


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key (the key never leaves the store)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        return private_pem(self.key, passphrase)


@dataclass(frozen=True)
class WireGuardKeys:
    private: str  # base64, as wg(8) writes it
    public: str


def private_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted when a passphrase is given."""
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def wireguard_keys() -> WireGuardKeys:
    key = x25519.X25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return WireGuardKeys(base64.b64encode(raw).decode(), base64.b64encode(pub).decode())


def wireguard_public(private: str) -> str:
    key = x25519.X25519PrivateKey.from_private_bytes(base64.b64decode(private))
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(pub).decode()


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as Postfix prints it (AB:CD:…)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


# A bundle is a sequence of PEM blocks, told apart by their labels.
_WG_LABEL = "WIREGUARD KEY"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\n.*?-----END \1-----\n", re.S)


def bundle(chain_pem: bytes, key_pem: bytes, wg_private: str) -> bytes:
    """One host's credentials in one PEM file: certificate chain, TLS key, WireGuard key."""
    wg = f"-----BEGIN {_WG_LABEL}-----\n{wg_private}\n-----END {_WG_LABEL}-----\n"
    return chain_pem + key_pem + wg.encode()


def unbundle(data: bytes) -> tuple[bytes, bytes, str]:
    """The parts of a `bundle`: (chain PEM, key PEM, WireGuard private key); ValueError if torn."""
    chain, keys, wg = b"", [], []
    end = 0
    for block in _PEM_BLOCK.finditer(data):
        if block.start() != end:
            break  # something between blocks: torn or foreign
        end = block.end()
        label = block.group(1).decode()
        if label == "CERTIFICATE" and not keys:
            chain += block.group(0)
        elif label == _WG_LABEL:
            wg.append(block.group(0).decode().splitlines()[1].strip())
        elif label.endswith("KEY") and not wg:
            keys.append(block.group(0))
    if end != len(data) or not chain or len(keys) != 1 or len(wg) != 1:
        raise ValueError("not a complete sensormail host bundle")
    return chain, keys[0], wg[0]


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return aki.key_identifier


def key_matches(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether the private key belongs to the certificate (guards a pair torn by a crash)."""
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class CA:
    """A certificate authority: the fleet root, or the issuing intermediate."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.cert = cert
        self.key = key

    @classmethod
    def new_root(cls, common_name: str, days: int, now: dt.datetime | None = None) -> CA:
        key = new_key()
        builder = cls._builder(_name(common_name), _name(common_name), key, days, now)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(_ca_usage(), critical=True)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        return cls(builder.sign(key, hashes.SHA256()), key)

    def new_intermediate(
        self,
        common_name: str,
        days: int,
        *,
        dns: tuple[str, ...] = (),
        networks: tuple[str, ...] = (),
        now: dt.datetime | None = None,
    ) -> CA:
        """The issuing CA: may sign leaves only (pathlen 0), for the fleet's names only."""
        key = new_key()
        builder = self._builder(_name(common_name), self.cert.subject, key, days, now)
        builder = self._with_aki(builder)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(_ca_usage(), critical=True)
        permitted: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        permitted += [x509.IPAddress(ipaddress.ip_network(n)) for n in networks]
        if permitted:
            # RFC 5280 requires name constraints to be critical.
            builder = builder.add_extension(
                x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None),
                critical=True,
            )
        return CA(builder.sign(self.key, hashes.SHA256()), key)

    def crl(
        self,
        revoked: list[tuple[int, dt.datetime]],
        days: int,
        *,
        number: int,
        now: dt.datetime | None = None,
    ) -> x509.CertificateRevocationList:
        """A CRL of (serial, revocation time) signed by this CA."""
        start = (now or dt.datetime.now(dt.UTC)) - BACKDATE
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(start)
            .next_update(start + dt.timedelta(days=days))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for serial, when in sorted(revoked):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.key, hashes.SHA256())

    @cached_property
    def _key_id(self) -> bytes:
        return self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    def key_identifier(self) -> bytes:
        return self._key_id

    def issue(
        self,
        common_name: str,
        purpose: Purpose,
        days: int,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        key: ec.EllipticCurvePrivateKey | None = None,
        now: dt.datetime | None = None,
    ) -> Issued:
        key = key or new_key()
        builder = self._builder(_name(common_name), self.cert.subject, key, days, now)
        builder = (
            self._with_aki(builder)
            .add_extension(_LEAF_CONSTRAINTS, critical=True)
            .add_extension(_LEAF_USAGE, critical=True)
            .add_extension(_EKU[purpose], critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key)

    @cached_property
    def _aki(self) -> x509.UnrecognizedExtension:
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return _encoded(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski))

    def _with_aki(self, builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
        return builder.add_extension(self._aki, critical=False)

    @staticmethod
    def _builder(
        subject: x509.Name,
        issuer: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        days: int,
        now: dt.datetime | None,
    ) -> x509.CertificateBuilder:
        start = (now or dt.datetime.now(dt.UTC)) - BACKDATE
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(_subject_key_id(key), False)
        )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf only signs its TLS handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _encoded(value: x509.ExtensionType) -> x509.UnrecognizedExtension:
    """An extension encoded once: the builder then copies its DER for every leaf."""
    return x509.UnrecognizedExtension(value.oid, value.public_bytes())


def _subject_key_id(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    """RFC 5280 method 1 (SHA-1 of the public point), as from_public_key computes it
    for EC keys, without its round trip through DER."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return x509.SubjectKeyIdentifier(hashlib.sha1(point).digest())


# The same for every leaf: encoded once (a tenth of the cost of issuing one).
_LEAF_CONSTRAINTS = _encoded(x509.BasicConstraints(ca=False, path_length=None))
_LEAF_USAGE = _encoded(_key_usage(ca=False))
_EKU = {p: _encoded(x509.ExtendedKeyUsage([p.value])) for p in Purpose}


def _ca_usage() -> x509.KeyUsage:
    return _key_usage(ca=True)
