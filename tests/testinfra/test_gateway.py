"""Host state of the gateway. Usable against the lab and against real hosts:

pytest --hosts=ssh://gateway --ssh-config=... tests/testinfra/test_gateway.py
"""

import pytest

testinfra_hosts = ["ssh://gateway"]

WG_ADDRESS = "10.77.0.1"  # the gateway takes the fleet subnet's first address


def test_tunnel_is_up(host):
    assert host.service("wg-quick@sensormail").is_running
    assert host.service("wg-quick@sensormail").is_enabled
    assert WG_ADDRESS in host.interface("sensormail").addresses


def test_postfix_listens_only_on_the_tunnel(host):
    """Guards against a sensor listener (or any SMTP port) on a public address."""
    lines = host.run("ss -Hltn").stdout.splitlines()
    local = sorted({line.split()[3] for line in lines if line.strip()})  # e.g. 10.77.0.1:465
    smtp = [addr for addr in local if addr.rsplit(":", 1)[1] in ("25", "465", "587")]
    assert smtp == [f"{WG_ADDRESS}:465"], local


@pytest.mark.parametrize(
    "path, mode",
    [
        ("/etc/wireguard", 0o700),
        ("/etc/wireguard/sensormail.conf", 0o600),
        ("/etc/postfix/sensormail/private", 0o700),
        ("/etc/postfix/sensormail/private/key.pem", 0o600),
    ],
)
def test_secrets_are_private(host, path, mode):
    f = host.file(path)
    assert f.exists
    assert f.user == "root"
    assert f.mode == mode


def test_postfix_config_is_valid_and_requires_client_certificates(host):
    assert host.run("postfix check").rc == 0
    service = f"{WG_ADDRESS}:465/inet"
    command = host.run(f"postconf -h -F '{service}/command'").stdout
    assert command.split()[0] == "smtpd"
    params = host.run(f"postconf -P '{service}/'").stdout.splitlines()
    for expected in (
        "smtpd_tls_wrappermode = yes",
        "smtpd_tls_security_level = encrypt",
        "smtpd_tls_req_ccert = yes",
        "smtpd_tls_mandatory_protocols = >=TLSv1.2",
        "smtpd_relay_restrictions = $sensormail_sensor_restrictions",
    ):
        assert f"{service}/{expected}" in params, params


def test_no_staged_leftovers_differ_from_live(host):
    for name in ("main.cf", "master.cf"):
        live = host.file(f"/etc/postfix/{name}").sha256sum
        assert host.file(f"/etc/postfix/sensormail/staged/{name}").sha256sum == live
