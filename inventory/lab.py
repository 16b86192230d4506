"""The local podman lab (`make lab`): one gateway, two sensors.

The recipient MX (`mx`) belongs to the lab, not to the fleet: the gateway
relays to it directly.
"""

from sensormail import lab as _lab_hosts

# Module-level names without "_" are pyinfra groups: keep helpers private.
_lab = _lab_hosts.lab_dir()
_address = {h.name: h.address for h in _lab_hosts.HOSTS}


def _ssh(name: str) -> dict:
    """Reach a lab host over SSH as a real host is reached: key and pinned host key."""
    return {
        "ssh_hostname": _address[name],
        "ssh_user": "root",
        "ssh_key": str(_lab / "id_ed25519"),
        "ssh_known_hosts_file": str(_lab / "known_hosts"),
        "ssh_strict_host_key_checking": "yes",
    }


gateway = [
    (
        "gateway",
        _ssh("gateway")
        | {
            "sensormail_lab": True,
            "sensormail_mail_name": "gateway.lab.example",
            "sensormail_relay": f"[{_address['mx']}]:25",
        },
    )
]

sensors = [
    (
        name,
        _ssh(name) | {"sensormail_lab": True, "sensormail_sender": f"{name}@sensors.lab.example"},
    )
    for name in ("sensor-1", "sensor-2")
]
