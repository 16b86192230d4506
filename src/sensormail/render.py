"""Each host's files, rendered from the fleet and its credentials.

The result is plain data (path, content, mode): the pyinfra deploy steps push
it, the Ansible roles render the same templates. Templates live in the
top-level `templates/` and know neither pyinfra nor Ansible.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import jinja2

from .fleet import Fleet, Sensor
from .store import Credentials

__all__ = [
    "AGENT_PATH",
    "FLUSH_UNITS",
    "POSTFIX_DIR",
    "POSTFIX_DROPIN",
    "POSTFIX_PRIVATE",
    "SENSOR_DIR",
    "SENSOR_PRIVATE",
    "WG_CONF",
    "WG_INTERFACE",
    "HostFile",
    "active_sensors",
    "gateway_files",
    "restriction_class",
    "sensor_files",
    "templates_dir",
]

WG_INTERFACE = "sensormail"
WG_CONF = f"/etc/wireguard/{WG_INTERFACE}.conf"
POSTFIX_DIR = "/etc/postfix/sensormail"
# Keys go into 0700 directories: pyinfra uploads first and sets the mode after.
POSTFIX_PRIVATE = f"{POSTFIX_DIR}/private"
SENSOR_DIR = "/etc/sensormail"
SENSOR_PRIVATE = f"{SENSOR_DIR}/private"
AGENT_PATH = "/usr/local/bin/sensormail-send"
SPOOL_DIR = "/var/spool/sensormail"
POSTFIX_DROPIN = "/etc/systemd/system/postfix@-.service.d/sensormail.conf"
FLUSH_UNITS = (
    "/etc/systemd/system/sensormail-flush.service",
    "/etc/systemd/system/sensormail-flush.timer",
)


@dataclass(frozen=True)
class HostFile:
    """One file for one host. Secret files go into 0700 directories."""

    path: str
    content: str
    mode: str = "0644"

    @property
    def secret(self) -> bool:
        return self.mode == "0600"


def templates_dir() -> Path:
    env = os.environ.get("SENSORMAIL_TEMPLATES")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / "templates"


@functools.cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # config files, not HTML
    )
    env.filters["py"] = repr
    return env


def restriction_class(sensor_name: str) -> str:
    """Postfix restriction class of a sensor (names allow no '-'; '_' is unused in hosts)."""
    return "sensormail_" + sensor_name.replace("-", "_")


def _render(template: str, **context: object) -> str:
    return _env().get_template(template).render(**context)


def _wg_host(creds: Credentials, name: str, *, private: bool) -> dict[str, str]:
    host = creds[name]
    return {
        "name": name,
        "address": host.record.address,
        "wg_public": host.record.wg_public,
        "wg_private": host.wg_private() if private else "",
    }


def _pem(data: bytes) -> str:
    return data.decode()


def active_sensors(fleet: Fleet, creds: Credentials) -> list[Sensor]:
    """The sensors the gateway admits: revoked ones are left out of every layer."""
    return [s for s in fleet.sensors if not creds[s.name].revoked]


def gateway_files(fleet: Fleet, creds: Credentials) -> list[HostFile]:
    gateway = creds[fleet.gateway.name]
    sensors_in = active_sensors(fleet, creds)
    peers = [
        {
            "name": s.name,
            "address": creds[s.name].record.address,
            "wg_public": creds[s.name].record.wg_public,
        }
        for s in sensors_in
    ]
    sensors = [
        {
            "name": s.name,
            "sender": s.sender,
            "cert_sha256": creds[s.name].record.cert_sha256,
            "restriction_class": restriction_class(s.name),
        }
        for s in sensors_in
    ]
    postfix = {
        "mail_name": fleet.gateway.mail_name,
        "relay": fleet.gateway.relay,
        "conf_dir": POSTFIX_DIR,
        "private_dir": POSTFIX_PRIVATE,
        "listen_address": gateway.record.address,
        "port": fleet.submission_port,
        "sensors": sensors,
    }
    return [
        HostFile(
            WG_CONF,
            _render(
                "wireguard/gateway.conf.j2",
                gateway=_wg_host(creds, fleet.gateway.name, private=True),
                prefixlen=fleet.vpn_subnet.prefixlen,
                wg_port=fleet.wg_port,
                peers=peers,
            ),
            "0600",
        ),
        HostFile("/etc/postfix/main.cf", _render("postfix/main.cf.j2", **postfix)),
        HostFile("/etc/postfix/master.cf", _render("postfix/master.cf.j2", **postfix)),
        HostFile(f"{POSTFIX_DIR}/ccert_access", _render("postfix/ccert_access.j2", **postfix)),
        HostFile(f"{POSTFIX_DIR}/header_checks", _render("postfix/header_checks.j2")),
        HostFile(f"{POSTFIX_DIR}/ca.pem", _pem(creds.root_pem)),
        HostFile(f"{POSTFIX_DIR}/cert.pem", _pem(gateway.cert_chain_pem)),
        HostFile(f"{POSTFIX_PRIVATE}/key.pem", _pem(gateway.key_pem()), "0600"),
        HostFile(
            POSTFIX_DROPIN,
            _render("systemd/postfix-after-wireguard.conf.j2", interface=WG_INTERFACE),
        ),
    ]


def sensor_files(fleet: Fleet, creds: Credentials, name: str) -> list[HostFile]:
    sensor = fleet.sensor(name)
    gateway = creds[fleet.gateway.name]
    agent = _render(
        "agent/sensormail-send.py.j2",
        sensor_name=name,
        sender=sensor.sender,
        gateway_address=gateway.record.address,
        gateway_name=fleet.gateway.mail_name,
        port=fleet.submission_port,
        ca_file=f"{SENSOR_DIR}/ca.pem",
        cert_file=f"{SENSOR_DIR}/cert.pem",
        key_file=f"{SENSOR_PRIVATE}/key.pem",
        spool_dir=SPOOL_DIR,
        interface=WG_INTERFACE,
    )
    return [
        HostFile(
            WG_CONF,
            _render(
                "wireguard/sensor.conf.j2",
                sensor=_wg_host(creds, name, private=True),
                gateway=_wg_host(creds, fleet.gateway.name, private=False),
                endpoint=fleet.gateway.endpoint,
                wg_port=fleet.wg_port,
            ),
            "0600",
        ),
        HostFile(f"{SENSOR_DIR}/ca.pem", _pem(creds.root_pem)),
        HostFile(f"{SENSOR_DIR}/cert.pem", _pem(creds[name].cert_chain_pem)),
        HostFile(f"{SENSOR_PRIVATE}/key.pem", _pem(creds[name].key_pem()), "0600"),
        HostFile(AGENT_PATH, agent, "0755"),
        *(HostFile(path, _render(f"systemd/{PurePosixPath(path).name}")) for path in FLUSH_UNITS),
    ]
