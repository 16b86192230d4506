"""A sample fleet as inventory entries, shared by the unit tests."""

from dataclasses import replace

from sensormail.fleet import HostEntry


def entries(*order: str, **extra: dict) -> list[HostEntry]:
    hosts = {
        "gw": HostEntry(
            "gw",
            frozenset({"gateway"}),
            {"sensormail_mail_name": "gw.fleet.example", "sensormail_relay": "[192.0.2.25]:25"}
            | extra.get("gw", {}),
            address="198.51.100.7",
        ),
        "temp-1": HostEntry(
            "temp-1",
            frozenset({"sensors"}),
            {"sensormail_sender": "temp-1@sensors.fleet.example"} | extra.get("temp-1", {}),
        ),
        "temp-2": HostEntry(
            "temp-2",
            frozenset({"sensors"}),
            {"sensormail_sender": "temp-2@sensors.fleet.example"} | extra.get("temp-2", {}),
        ),
    }
    # As the inventory readers do: the SSH address is how the controller reaches a host.
    hosts = {
        name: replace(h, address=h.data.get("ssh_hostname", h.address)) for name, h in hosts.items()
    }
    return [hosts[name] for name in (order or hosts)]
