"""Host state of a sensor (lab: sensor-1 and sensor-2)."""

import pytest

testinfra_hosts = ["ssh://sensor-1", "ssh://sensor-2"]

GATEWAY_WG = "10.77.0.1"


def test_tunnel_is_up_and_reaches_the_gateway(host):
    assert host.service("wg-quick@sensormail").is_running
    assert host.service("wg-quick@sensormail").is_enabled
    # Only the gateway is routed into the tunnel.
    allowed = host.run("wg show sensormail allowed-ips").stdout.split()
    assert allowed[1:] == [f"{GATEWAY_WG}/32"]
    connect = f"import socket; socket.create_connection(('{GATEWAY_WG}', 465), 5)"
    probe = host.run(f'python3 -c "{connect}"')
    assert probe.rc == 0, probe.stderr


def test_agent_is_installed(host):
    agent = host.file("/usr/local/bin/sensormail-send")
    assert agent.mode == 0o755
    assert agent.contains("^import ssl$")
    assert host.run("python3 -m py_compile /usr/local/bin/sensormail-send").rc == 0
    assert host.service("sensormail-flush.timer").is_enabled


def test_agent_imports_only_the_standard_library(host):
    """The agent must run on a bare sensor: no third-party module."""
    script = (
        "import ast,sys; t=ast.parse(open('/usr/local/bin/sensormail-send').read()); "
        "mods={(n.module or '') if isinstance(n,ast.ImportFrom) else a.name "
        "for n in ast.walk(t) if isinstance(n,(ast.Import,ast.ImportFrom)) "
        "for a in (n.names if isinstance(n,ast.Import) else [n])}; "
        "bad=[m for m in mods if m.split('.')[0] not in sys.stdlib_module_names]; "
        "print(bad); sys.exit(bool(bad))"
    )
    result = host.run(f'python3 -c "{script}"')
    assert result.rc == 0, result.stdout


@pytest.mark.parametrize(
    "path, mode",
    [
        ("/etc/wireguard", 0o700),
        ("/etc/wireguard/sensormail.conf", 0o600),
        ("/etc/sensormail/private", 0o700),
        ("/etc/sensormail/private/key.pem", 0o600),
    ],
)
def test_secrets_are_private(host, path, mode):
    f = host.file(path)
    assert f.exists
    assert f.user == "root"
    assert f.mode == mode
