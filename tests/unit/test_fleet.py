"""Inventory validation: every problem named by host and field, all at once."""

import pytest
from sample import entries

from sensormail.fleet import FleetError, HostEntry, Mode, build_fleet


def test_sample_fleet_is_valid():
    fleet = build_fleet(entries())
    assert fleet.gateway.name == "gw"
    assert fleet.gateway.endpoint == "198.51.100.7"  # defaults to the SSH address
    assert [s.name for s in fleet.sensors] == ["temp-1", "temp-2"]
    assert all(s.mode is Mode.CERT for s in fleet.sensors)
    assert str(fleet.vpn_subnet) == "10.77.0.0/24"


def test_order_of_the_inventory_does_not_matter():
    assert build_fleet(entries("temp-2", "gw", "temp-1")) == build_fleet(entries())


def _problems(host_entries) -> list[str]:
    with pytest.raises(FleetError) as info:
        build_fleet(host_entries)
    return info.value.problems


@pytest.mark.parametrize(
    "extra, host, field",
    [
        ({"temp-1": {"sensormail_colour": "red"}}, "temp-1", "sensormail_colour"),
        ({"temp-1": {"sensormail_sender": None}}, "temp-1", "sensormail_sender"),
        ({"temp-1": {"sensormail_sender": "not-an-address"}}, "temp-1", "sensormail_sender"),
        ({"temp-1": {"sensormail_sender": "Temp@x.example"}}, "temp-1", "sensormail_sender"),
        ({"temp-2": {"sensormail_sender": "temp-1@sensors.fleet.example"}}, "temp-2",
         "sensormail_sender"),
        ({"temp-1": {"sensormail_mode": "token"}}, "temp-1", "sensormail_mode"),
        ({"temp-1": {"sensormail_relay": "[x]:25"}}, "temp-1", "sensormail_relay"),
        ({"gw": {"sensormail_sender": "gw@x.example"}}, "gw", "sensormail_sender"),
        ({"gw": {"sensormail_wg_port": 70000}}, "gw", "sensormail_wg_port"),
        ({"gw": {"sensormail_vpn_subnet": "10.77.0.0/30"}}, "gw", "sensormail_vpn_subnet"),
        ({"gw": {"sensormail_vpn_subnet": "10.77.0.1/24"}}, "gw", "sensormail_vpn_subnet"),
        ({"gw": {"sensormail_mail_name": "not a name"}}, "gw", "sensormail_mail_name"),
        ({"temp-2": {"sensormail_wg_port": 1}}, "temp-2", "sensormail_wg_port"),
        ({"gw": {"sensormail_endpoint": "10.77.0.9"}}, "gw", "sensormail_endpoint"),
        ({"gw": {"sensormail_vpn_subnet": "0.0.0.0/0"}}, "gw", "sensormail_vpn_subnet"),
        ({"gw": {"sensormail_vpn_subnet": "127.0.0.0/24"}}, "gw", "sensormail_vpn_subnet"),
        ({"gw": {"sensormail_vpn_subnet": "224.0.0.0/24"}}, "gw", "sensormail_vpn_subnet"),
        ({"temp-1": {"ssh_hostname": "10.77.0.5"}}, "temp-1", "ssh_hostname"),
        ({"gw": {"sensormail_cert_days": 0}}, "gw", "sensormail_cert_days"),
        ({"gw": {"sensormail_cert_days": 4000}}, "gw", "sensormail_cert_days"),
        ({"gw": {"sensormail_renew_after": 1.5}}, "gw", "sensormail_renew_after"),
    ],
)  # fmt: skip
def test_bad_field_is_named_with_its_host(extra, host, field):
    problems = _problems(entries(**extra))
    assert any(p.startswith(f"host {host!r}, field {field!r}") for p in problems), problems


def test_missing_sender_key_is_reported():
    bare = HostEntry("temp-3", frozenset({"sensors"}), {})
    problems = _problems([*entries(), bare])
    assert problems == ["host 'temp-3', field 'sensormail_sender': "
                        "required: the one address this sensor sends as"]  # fmt: skip


def test_missing_gateway_is_reported():
    problems = _problems(entries("temp-1", "temp-2"))
    assert problems == ["inventory, group 'gateway': no gateway host"]


def test_every_problem_is_reported_at_once():
    problems = _problems(
        entries(
            **{
                "temp-1": {"sensormail_sender": None},
                "temp-2": {"sensormail_bogus": 1},
            }
        )
    )
    assert len(problems) == 2


def test_duplicate_host_names():
    problems = _problems([*entries(), entries("temp-1")[0]])
    assert "host 'temp-1', field 'name': duplicate host name" in problems


def test_a_misspelt_group_does_not_drop_a_sensor_silently():
    hosts = entries()
    misplaced = HostEntry("temp-3", frozenset({"sensor"}), {"sensormail_sender": "t3@x.example"})
    with pytest.raises(FleetError) as err:
        build_fleet([*hosts, misplaced])
    assert (
        "host 'temp-3', field 'groups': has sensormail_sender but is in neither group 'gateway' "
        "nor 'sensors' (its groups: sensor; did you mean 'sensors'?)"
    ) in str(err.value)
    # A host of some other group, with nothing of ours, is no business of the fleet.
    other = HostEntry("monitor", frozenset({"monitoring"}), {"ssh_port": 22})
    assert "monitor" not in build_fleet([*hosts, other]).hosts


@pytest.mark.parametrize(
    ("key", "meant"),
    [("sensormial_relay", "sensormail_relay"), ("sensormail_sendr", "sensormail_sender")],
)
def test_a_misspelt_key_is_named_with_what_was_meant(key, meant):
    with pytest.raises(FleetError, match=f"field '{key}': unknown key \\(did you mean '{meant}'"):
        build_fleet(entries(**{"temp-1": {key: "x"}}))


@pytest.mark.parametrize(
    ("host", "extra", "field"),
    [
        ("temp-1", {"sensormail_sender": "temp-1@sensors.fleet.example\n"}, "sensormail_sender"),
        ("temp-1", {"sensormail_sender": "temp-1\n@sensors.fleet.example"}, "sensormail_sender"),
        ("gw", {"sensormail_mail_name": "gw.fleet.example\n"}, "sensormail_mail_name"),
        ("gw", {"sensormail_relay": "[192.0.2.25]:25\n"}, "sensormail_relay"),
    ],
)
def test_a_trailing_newline_is_refused(host, extra, field):
    """It would split lines of main.cf, the WireGuard config and the certificate map."""
    with pytest.raises(FleetError, match=f"host '{host}', field '{field}'"):
        build_fleet(entries(**{host: extra}))


def test_a_host_name_with_a_newline_is_refused():
    named = HostEntry("temp-3\n", frozenset({"sensors"}), {"sensormail_sender": "t3@x.example"})
    with pytest.raises(FleetError, match="field 'name'"):
        build_fleet([*entries(), named])
