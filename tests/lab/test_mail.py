"""End to end: mail from each lab sensor through the gateway to `mx`."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import secrets
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sensormail import lab, pki
from sensormail.store import Store

SENSORS = {
    "sensor-1": "sensor-1@sensors.lab.example",
    "sensor-2": "sensor-2@sensors.lab.example",
}
RECIPIENT = f"ops@{lab.RECIPIENT_DOMAIN}"
PROBE = (Path(__file__).parent / "smtp_probe.py").read_text()
LAB_ADDRESSES = {h.name: h.address for h in lab.HOSTS}


def _arrived(token: str, timeout: float = 60) -> email.message.EmailMessage:
    found = lab.arrived(token, timeout)
    if found is None:
        pytest.fail(f"message {token} did not arrive at mx within {timeout}s")
    return email.message_from_string(found[1], policy=email.policy.default)


@pytest.fixture(scope="module")
def delivered(deployed_lab) -> dict[str, email.message.EmailMessage]:
    """One message sent from each sensor with sensormail-send -t, as it arrived."""
    tokens = {}
    for sensor in SENSORS:
        tokens[sensor] = secrets.token_hex(8)
        message = (
            f"To: {RECIPIENT}\n"
            f"From: somebody-else@example.org\n"
            # With any Resent-* header Postfix would add Resent-* lines instead of From.
            f"Resent-From: {SENSORS['sensor-2']}\n"
            f"Sender: {SENSORS['sensor-2']}\n"
            f"Subject: reading {tokens[sensor]}\n\n"
            f"temperature 21.5 token {tokens[sensor]}\n"
        )
        sent = deployed_lab.ssh(sensor, "sensormail-send -t", stdin=message)
        assert sent.returncode == 0, sent.stderr
        assert "queued" not in sent.stderr, f"{sensor}: not sent at once: {sent.stderr}"
    return {sensor: _arrived(token) for sensor, token in tokens.items()}


@pytest.mark.parametrize("sensor", sorted(SENSORS))
def test_message_arrives_with_the_sensors_own_from(delivered, sensor):
    """Guards against a sensor choosing its From (or Resent-From, Sender) itself."""
    message = delivered[sensor]
    assert message["From"].addresses[0].addr_spec == SENSORS[sensor]
    assert len(message.get_all("From")) == 1
    for forged in ("Resent-From", "Resent-Sender", "Sender"):
        assert forged not in message, message[forged]
    assert message["Return-Path"] == f"<{SENSORS[sensor]}>"


@pytest.mark.parametrize("sensor", sorted(SENSORS))
def test_no_header_names_a_sensor_address(delivered, deployed_lab, sensor):
    """Guards against Received lines (or anything else) leaking where a sensor is."""
    wg_addresses = [
        line.split()[1]
        for line in deployed_lab.ssh(
            "gateway", "wg show sensormail allowed-ips"
        ).stdout.splitlines()
    ]
    assert len(wg_addresses) == len(SENSORS)
    forbidden = [LAB_ADDRESSES[s] for s in SENSORS] + [a.split("/")[0] for a in wg_addresses]
    forbidden += ["probe.invalid", "sensor.invalid"]
    headers = "\n".join(f"{k}: {v}" for k, v in delivered[sensor].items())
    for needle in forbidden:
        assert needle not in headers, f"{needle} leaked in:\n{headers}"
    # The only Received line is mx's own, naming the gateway.
    received = delivered[sensor].get_all("Received")
    assert len(received) == 1 and LAB_ADDRESSES["gateway"] in received[0]


def _selfsigned_pem() -> str:
    """A client certificate with clientAuth that no fleet CA issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sensor-1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return (cert.public_bytes(serialization.Encoding.PEM) + key_pem).decode()


def _unlisted_fleet_pem(the_lab) -> str:
    """A valid certificate of the fleet's issuing CA whose fingerprint the gateway does not list."""
    store = Store(the_lab.pki_dir)
    issuing = pki.CA(
        pki.load_cert((store.ca_dir / "issuing.crt").read_bytes()),
        store._load_key(store.ca_dir / "issuing.key", store.passphrase(lab=True)),
    )
    issued = issuing.issue("sensor-1", pki.Purpose.CLIENT, 1)
    chain = issued.cert_pem + issuing.cert.public_bytes(serialization.Encoding.PEM)
    return (chain + issued.key_pem()).decode()


def probe(the_lab, sensor: str, mode: str, sender: str, timeout: float = 20) -> str:
    """One MAIL+RCPT from a sensor by hand; returns e.g. "RCPT 250" or "ERROR …"."""
    pem = _unlisted_fleet_pem(the_lab) if mode == "unlisted" else _selfsigned_pem()
    script = f"SELFSIGNED_PEM = {pem!r}\n" + PROBE
    result = the_lab.ssh(sensor, f"python3 - {mode} {sender} {timeout}", stdin=script)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_sensor_with_its_own_certificate_may_send_as_itself(deployed_lab):
    assert probe(deployed_lab, "sensor-1", "cert", SENSORS["sensor-1"]) == "RCPT 250"


def test_agent_checks_the_gateways_name(deployed_lab):
    outcome = probe(deployed_lab, "sensor-1", "wrongname", SENSORS["sensor-1"])
    assert outcome.startswith("ERROR SSLCertVerificationError"), outcome
    assert "impostor.lab.example" in outcome


def test_sensor_cannot_send_as_another_sensor(deployed_lab):
    outcome = probe(deployed_lab, "sensor-1", "cert", SENSORS["sensor-2"])
    assert re.fullmatch(r"(MAIL|RCPT) 5\d\d", outcome), outcome


def test_agent_refuses_a_foreign_envelope_sender(deployed_lab):
    sent = deployed_lab.ssh(
        "sensor-1", f"sensormail-send -f {SENSORS['sensor-2']} {RECIPIENT}", stdin="x\n"
    )
    assert sent.returncode == 77  # EX_NOPERM
    assert SENSORS["sensor-1"] in sent.stderr


@pytest.mark.parametrize("mode", ["nocert", "selfsigned", "unlisted"])
def test_client_without_a_fleet_certificate_is_refused(deployed_lab, mode):
    outcome = probe(deployed_lab, "sensor-1", mode, SENSORS["sensor-1"])
    assert not outcome.startswith("RCPT 2"), outcome
    assert re.match(r"(ERROR|MAIL [45]|RCPT [45])", outcome), outcome


@pytest.mark.parametrize("where", ["controller", "sensor-1"])
def test_listener_unreachable_on_the_lab_address(deployed_lab, where):
    """Only the WireGuard address carries mail: the lab network must not reach Postfix."""
    gateway = LAB_ADDRESSES["gateway"]
    for port in (465, 25, 587):
        if where == "controller":
            with pytest.raises(OSError):
                socket.create_connection((gateway, port), timeout=3).close()
        else:
            result = deployed_lab.ssh(
                where,
                f"python3 -c \"import socket; socket.create_connection(('{gateway}', {port}), 3)\"",
            )
            assert result.returncode != 0 and "Error" in result.stderr, (port, result.stderr)


def test_second_deploy_changes_nothing(deployed_lab, delivered):
    store = deployed_lab.pki_dir
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != ".lock"}
    result = deployed_lab.deploy()
    output = result.stdout + result.stderr  # pyinfra reports on stderr
    assert result.returncode == 0, output[-3000:]
    total = [line for line in output.splitlines() if "Grand total" in line]
    assert total, output[-3000:]
    hosts, success, error, no_change = total[0].split()[-4:]
    assert (success, error) == ("-", "-"), total[0]
    assert hosts == no_change
    after = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
