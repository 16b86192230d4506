"""The send agent's message handling, run from the rendered template (standard library only)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from sensormail import render

SENDER = "temp-1@sensors.fleet.example"


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    source = render._render(
        "agent/sensormail-send.py.j2",
        sensor_name="temp-1",
        sender=SENDER,
        gateway_address="10.77.0.1",
        gateway_name="gw.fleet.example",
        port=465,
        ca_file="/nonexistent/ca.pem",
        cert_file="/nonexistent/cert.pem",
        key_file="/nonexistent/key.pem",
        spool_dir=str(tmp_path_factory.mktemp("spool")),
        interface="sensormail",
    )
    path = Path(tmp_path_factory.mktemp("agent")) / "sensormail_send.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sensormail_send", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prepare(agent, raw: str, *argv: str):
    rcpts, data = agent.prepare(raw.encode(), agent.parse_args(list(argv)))
    return rcpts, email.message_from_bytes(data, policy=email.policy.default)


def test_recipients_from_headers_and_bcc_dropped(agent):
    raw = "To: a@x.example\nCc: B <b@x.example>\nBcc: c@x.example\nSubject: s\n\nbody\n"
    rcpts, message = _prepare(agent, raw, "-t", "-oi")
    assert rcpts == ["a@x.example", "b@x.example", "c@x.example"]
    assert "Bcc" not in message


def test_identity_comes_from_the_agent_not_the_message(agent):
    raw = "To: a@x.example\nFrom: boss@x.example\nDate: Tue, 01 Dec 2026 10:00:00 +0530\n\nx\n"
    _, message = _prepare(agent, raw, "-t")
    assert message["From"] == SENDER
    # The same moment, without the sensor's local offset.
    assert message["Date"].datetime == dt.datetime(2026, 12, 1, 4, 30, tzinfo=dt.UTC)
    assert "+0530" not in message.as_string()
    assert re.fullmatch(r"<[0-9a-f]{32}@sensors\.fleet\.example>", message["Message-ID"])


def test_a_foreign_sender_is_refused(agent):
    with pytest.raises(agent.Failure) as info:
        _prepare(agent, "x\n", "-f", "other@x.example", "a@x.example")
    assert info.value.code == 77


@pytest.mark.parametrize(
    "argv, code",
    [((), 64), (("-t",), 64), (("not an address",), 67), (("-Z",), 64)],
)
def test_bad_invocations(agent, argv, code):
    with pytest.raises(agent.Failure) as info:
        _prepare(agent, "Subject: s\n\nx\n", *argv)
    assert info.value.code == code


def test_long_lines_travel_encoded_and_arrive_unchanged(agent):
    body = "reading=" + "7" * 5000 + " ünïcode"
    _, message = _prepare(agent, f"To: a@x.example\nSubject: s\n\n{body}\n", "-t")
    serialized = message.as_bytes()
    assert max(len(line) for line in serialized.splitlines()) <= 998
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message.get_payload(decode=True).decode().replace("\r\n", "\n") == body + "\n"


def test_agent_uses_only_the_standard_library(agent):
    imported = {name.split(".")[0] for name in vars(agent) if name in sys.modules}
    assert all(name in sys.stdlib_module_names for name in imported)


def test_help(agent, capsys):
    assert agent.main(["--help"]) == 0
    assert "Usage: sensormail-send" in capsys.readouterr().out
