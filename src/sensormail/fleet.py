"""The fleet model: inventory data in, a validated, typed Fleet out.

Every layer reads the Fleet and nothing else of the inventory. This module
knows neither pyinfra nor Ansible: a deployer turns its inventory into
`HostEntry` records and calls `build_fleet`.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import Any

__all__ = [
    "DEFAULTS",
    "Fleet",
    "FleetError",
    "Gateway",
    "HostEntry",
    "Lifetimes",
    "Mode",
    "Sensor",
    "build_fleet",
]

GATEWAY_GROUP = "gateway"
SENSOR_GROUP = "sensors"
PREFIX = "sensormail_"

# Fleet-wide options (usually group data for all hosts) and their defaults.
DEFAULTS: dict[str, Any] = {
    "sensormail_vpn_subnet": "10.77.0.0/24",
    "sensormail_wg_port": 51820,
    "sensormail_submission_port": 465,
    "sensormail_lab": False,
    # Certificate lifetimes in days, and when to renew (fraction of a lifetime).
    "sensormail_root_days": 3650,
    "sensormail_issuing_days": 1825,
    "sensormail_cert_days": 365,
    "sensormail_crl_days": 30,
    "sensormail_renew_after": 2 / 3,
}
GATEWAY_KEYS = {"sensormail_endpoint", "sensormail_mail_name", "sensormail_relay"}
SENSOR_KEYS = {"sensormail_sender", "sensormail_mode"}
_KNOWN_KEYS = frozenset(DEFAULTS) | GATEWAY_KEYS | SENSOR_KEYS
_GROUPS = frozenset({GATEWAY_GROUP, SENSOR_GROUP})

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_DOMAIN = re.compile(r"^(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z")
_LOCAL = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?\Z")
_RELAY = re.compile(r"^(?:\[[A-Za-z0-9.:-]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?\Z")


class FleetError(ValueError):
    """The inventory does not describe a valid fleet. Lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid inventory:\n  " + "\n  ".join(problems))


class Mode(StrEnum):
    """How a sensor authenticates to the gateway's Postfix."""

    CERT = "cert"
    PSK = "psk"


@dataclass(frozen=True)
class HostEntry:
    """One inventory host as a deployer sees it: name, groups, merged data."""

    name: str
    groups: frozenset[str]
    data: Mapping[str, Any]
    address: str | None = None  # how the controller reaches the host (ssh_hostname)


@dataclass(frozen=True)
class Sensor:
    name: str
    sender: str
    mode: Mode = Mode.CERT


@dataclass(frozen=True)
class Gateway:
    name: str
    endpoint: str  # address the sensors dial for WireGuard
    mail_name: str  # Postfix myhostname and the name in its certificate
    relay: str  # Postfix relayhost ("" = deliver by MX lookup)


@dataclass(frozen=True)
class Lifetimes:
    """How long credentials live; anything past `renew_after` of its life is renewed."""

    root_days: int = 3650
    issuing_days: int = 1825
    cert_days: int = 365
    crl_days: int = 30
    renew_after: float = 2 / 3


@dataclass(frozen=True)
class Fleet:
    gateway: Gateway
    sensors: tuple[Sensor, ...]
    vpn_subnet: ipaddress.IPv4Network
    wg_port: int = 51820
    submission_port: int = 465
    lab: bool = False  # lab-only conveniences (a CA passphrase kept in the store)
    lifetimes: Lifetimes = Lifetimes()
    hosts: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", (self.gateway.name, *(s.name for s in self.sensors)))

    @cached_property
    def _by_name(self) -> dict[str, Sensor]:
        return {s.name: s for s in self.sensors}

    def sensor(self, name: str) -> Sensor:
        return self._by_name[name]


def _problem(host: str, key: str, text: str) -> str:
    return f"host {host!r}, field {key!r}: {text}"


@lru_cache(maxsize=4096)  # the same few keys on every host of a large fleet
def _near(word: str, choices: frozenset[str]) -> str:
    """The choice `word` is most likely a misspelling of, quoted; '' if none is close."""
    if word in choices:
        return ""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.85)
    return repr(close[0]) if close else ""


def _port(host: str, key: str, value: Any, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        problems.append(_problem(host, key, f"must be a port number 1-65535, not {value!r}"))
        return 0
    return value


def _sender(host: str, value: Any, problems: list[str]) -> str:
    key = "sensormail_sender"
    if value is None:
        problems.append(_problem(host, key, "required: the one address this sensor sends as"))
        return ""
    if not isinstance(value, str) or value.count("@") != 1:
        problems.append(_problem(host, key, f"not an e-mail address: {value!r}"))
        return ""
    local, _, domain = value.partition("@")
    if not _LOCAL.match(local) or not _DOMAIN.match(domain):
        problems.append(
            _problem(host, key, f"not a plain lower-case address like name@example.org: {value!r}")
        )
        return ""
    return value


def _inside(address: object, subnet: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_address(str(address)) in subnet
    except ValueError:
        return False  # a host name, not an address


def _lifetimes(where: str, options: dict[str, Any], problems: list[str]) -> Lifetimes:
    days = {}
    for name in ("root", "issuing", "cert", "crl"):
        key = f"sensormail_{name}_days"
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 36500:
            problems.append(
                _problem(where, key, f"must be a number of days 1-36500, not {value!r}")
            )
            value = DEFAULTS[key]
        days[name] = value
    if not days["cert"] < days["issuing"] < days["root"]:
        problems.append(
            _problem(
                where,
                "sensormail_cert_days",
                "lifetimes must nest: cert_days < issuing_days < root_days",
            )
        )
    renew = options["sensormail_renew_after"]
    if isinstance(renew, bool) or not isinstance(renew, int | float) or not 0 < renew < 1:
        problems.append(
            _problem(where, "sensormail_renew_after", f"must be a fraction 0-1, not {renew!r}")
        )
        renew = DEFAULTS["sensormail_renew_after"]
    return Lifetimes(days["root"], days["issuing"], days["cert"], days["crl"], float(renew))


def build_fleet(entries: Iterable[HostEntry]) -> Fleet:
    """Validate inventory entries and return the Fleet, or raise FleetError."""
    entries = list(entries)
    problems: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            problems.append(_problem(entry.name, "name", "duplicate host name"))
        seen.add(entry.name)

    gateways = [e for e in entries if GATEWAY_GROUP in e.groups]
    sensor_entries = [e for e in entries if SENSOR_GROUP in e.groups]
    if not gateways:
        problems.append(f"inventory, group {GATEWAY_GROUP!r}: no gateway host")
    elif len(gateways) > 1:
        names = ", ".join(e.name for e in gateways)
        problems.append(f"inventory, group {GATEWAY_GROUP!r}: exactly one gateway, found {names}")

    # Unknown or misplaced keys, and names usable in file paths and Postfix maps.
    for entry in entries:
        is_gateway = GATEWAY_GROUP in entry.groups
        is_sensor = SENSOR_GROUP in entry.groups
        if is_gateway and is_sensor:
            problems.append(_problem(entry.name, "groups", "a host cannot be gateway and sensor"))
        if (is_gateway or is_sensor) and not _NAME.match(entry.name):
            problems.append(
                _problem(entry.name, "name", "use lower-case letters, digits and '-' (max 63)")
            )
        allowed = set(DEFAULTS)
        allowed |= GATEWAY_KEYS if is_gateway else set()
        allowed |= SENSOR_KEYS if is_sensor else set()
        for key in sorted(entry.data):
            if key in allowed:
                continue
            near = _near(key, _KNOWN_KEYS)
            unknown = f"unknown key (did you mean {near}?)" if near else "unknown key"
            if not key.startswith(PREFIX):
                if near:  # a misspelt prefix: silently ignored otherwise
                    problems.append(_problem(entry.name, key, unknown))
            elif key in GATEWAY_KEYS | SENSOR_KEYS:
                role = "gateway" if key in GATEWAY_KEYS else "sensor"
                if is_gateway or is_sensor:
                    problems.append(_problem(entry.name, key, f"only valid on a {role} host"))
                else:
                    # A misspelt group: the host would silently drop out of the fleet.
                    groups = ", ".join(sorted(entry.groups)) or "none"
                    near = next(filter(None, (_near(g, _GROUPS) for g in entry.groups)), "")
                    hint = f"; did you mean {near}?" if near else ""
                    text = (
                        f"has {key} but is in neither group {GATEWAY_GROUP!r} nor "
                        f"{SENSOR_GROUP!r} (its groups: {groups}{hint})"
                    )
                    problems.append(_problem(entry.name, "groups", text))
            else:
                problems.append(_problem(entry.name, key, unknown))

    # Fleet-wide options: read from the gateway, must agree on every fleet host.
    options = dict(DEFAULTS)
    if gateways:
        for key in DEFAULTS:
            if key in gateways[0].data:
                options[key] = gateways[0].data[key]
        for entry in sensor_entries:
            for key in DEFAULTS:
                if key in entry.data and entry.data[key] != options[key]:
                    problems.append(
                        _problem(entry.name, key, "fleet-wide option differs from the gateway's")
                    )
    where = gateways[0].name if gateways else "inventory"

    try:
        subnet = ipaddress.IPv4Network(str(options["sensormail_vpn_subnet"]), strict=True)
    except ValueError as exc:
        problems.append(_problem(where, "sensormail_vpn_subnet", f"not an IPv4 network: {exc}"))
        subnet = ipaddress.IPv4Network(DEFAULTS["sensormail_vpn_subnet"])
    if not subnet.is_private or subnet.is_loopback or subnet.is_multicast or subnet.prefixlen < 8:
        problems.append(
            _problem(
                where,
                "sensormail_vpn_subnet",
                f"{subnet} is not a private unicast network (e.g. 10.77.0.0/24)",
            )
        )
    usable = max(subnet.num_addresses - 2, 0)
    if usable < 1 + len(sensor_entries):
        problems.append(
            _problem(
                where,
                "sensormail_vpn_subnet",
                f"{subnet} has {usable} host addresses, the fleet needs {1 + len(sensor_entries)}",
            )
        )
    wg_port = _port(where, "sensormail_wg_port", options["sensormail_wg_port"], problems)
    submission_port = _port(
        where, "sensormail_submission_port", options["sensormail_submission_port"], problems
    )
    lab = options["sensormail_lab"]
    if not isinstance(lab, bool):
        problems.append(_problem(where, "sensormail_lab", f"must be true or false, not {lab!r}"))
    lifetimes = _lifetimes(where, options, problems)

    gateway = None
    if gateways:
        g = gateways[0]
        endpoint = g.data.get("sensormail_endpoint", g.address or g.name)
        mail_name = g.data.get("sensormail_mail_name", f"{g.name}.sensormail.invalid")
        relay = g.data.get("sensormail_relay", "")
        if not isinstance(endpoint, str) or not endpoint or any(c.isspace() for c in endpoint):
            problems.append(_problem(g.name, "sensormail_endpoint", f"not a host: {endpoint!r}"))
        if not isinstance(mail_name, str) or not _DOMAIN.match(mail_name):
            problems.append(
                _problem(g.name, "sensormail_mail_name", f"not a domain name: {mail_name!r}")
            )
        if not isinstance(relay, str) or (relay and not _RELAY.match(relay)):
            problems.append(
                _problem(g.name, "sensormail_relay", f"not a Postfix next hop: {relay!r}")
            )
        gateway = Gateway(g.name, str(endpoint), str(mail_name), str(relay))
        if _inside(endpoint, subnet):
            problems.append(
                _problem(
                    g.name,
                    "sensormail_endpoint",
                    f"{endpoint} lies inside the VPN subnet {subnet}: the tunnel would route "
                    "to itself",
                )
            )

    # The VPN subnet must not overlap the addresses the hosts are reached at.
    for entry in entries:
        if entry.address and _inside(entry.address, subnet):
            problems.append(
                _problem(
                    entry.name,
                    "ssh_hostname",
                    f"{entry.address} lies inside the VPN subnet {subnet}; choose another "
                    "sensormail_vpn_subnet",
                )
            )

    sensors = []
    senders: dict[str, str] = {}
    for entry in sensor_entries:
        sender = _sender(entry.name, entry.data.get("sensormail_sender"), problems)
        if sender and sender in senders:
            problems.append(
                _problem(
                    entry.name, "sensormail_sender", f"{sender} is already {senders[sender]}'s"
                )
            )
        senders.setdefault(sender, entry.name)
        raw_mode = entry.data.get("sensormail_mode", Mode.CERT.value)
        try:
            mode = Mode(raw_mode)
        except ValueError:
            problems.append(
                _problem(
                    entry.name, "sensormail_mode", f"must be 'cert' or 'psk', not {raw_mode!r}"
                )
            )
            mode = Mode.CERT
        if mode is Mode.PSK:
            problems.append(
                _problem(entry.name, "sensormail_mode", "psk mode is not available yet")
            )
        sensors.append(Sensor(entry.name, sender, mode))

    if problems or gateway is None:
        raise FleetError(problems)
    return Fleet(
        gateway=gateway,
        sensors=tuple(sorted(sensors, key=lambda s: s.name)),
        vpn_subnet=subnet,
        wg_port=wg_port,
        submission_port=submission_port,
        lab=lab,
        lifetimes=lifetimes,
    )
