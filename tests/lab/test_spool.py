"""The agent's spool: mail written while the gateway is away is sent later, none lost."""

import base64
import json
import secrets
import time

import pytest

from sensormail import lab

SPOOL = "/var/spool/sensormail"
RECIPIENT = f"ops@{lab.RECIPIENT_DOMAIN}"


@pytest.fixture
def tunnel_down(deployed_lab):
    """sensor-2 without its tunnel; restored afterwards whatever happens."""
    down = deployed_lab.ssh("sensor-2", "systemctl stop wg-quick@sensormail")
    assert down.returncode == 0, down.stderr
    try:
        yield
    finally:
        deployed_lab.ssh("sensor-2", "systemctl start wg-quick@sensormail")


def _spooled_on(the_lab, sensor: str) -> list[str]:
    return the_lab.ssh(sensor, f"ls {SPOOL}").stdout.split()


def _spooled(the_lab) -> list[str]:
    return _spooled_on(the_lab, "sensor-2")


def test_mail_sent_while_the_gateway_is_unreachable_is_delivered_later(deployed_lab, tunnel_down):
    token = secrets.token_hex(8)
    sent = deployed_lab.ssh("sensor-2", f"sensormail-send {RECIPIENT}", stdin=f"token {token}\n")
    # Like sendmail: accepted into the queue is success; the agent says it queued.
    assert sent.returncode == 0, sent.stderr
    assert "queued" in sent.stderr
    # ...without trying the LAN route to the gateway's address instead of the tunnel.
    assert "the tunnel sensormail is down" in sent.stderr, sent.stderr
    spooled = _spooled(deployed_lab)
    assert len(spooled) == 1 and spooled[0].endswith(".json")
    mode = deployed_lab.ssh("sensor-2", f"stat -c %a {SPOOL}/{spooled[0]}").stdout.strip()
    assert mode == "600"

    # Still away: a flush keeps the message and reports a temporary failure.
    flush = deployed_lab.ssh("sensor-2", "sensormail-send -q")
    assert flush.returncode == 75, flush.stderr
    assert _spooled(deployed_lab) == spooled

    assert deployed_lab.ssh("sensor-2", "systemctl start wg-quick@sensormail").returncode == 0
    deadline = time.monotonic() + 30
    while (flush := deployed_lab.ssh("sensor-2", "sensormail-send -q")).returncode != 0:
        assert time.monotonic() < deadline, flush.stderr  # the tunnel takes a moment
        time.sleep(1)
    assert _spooled(deployed_lab) == []
    assert lab.arrived(token, timeout=30), "the spooled message did not arrive"


def test_an_unreadable_spool_file_does_not_hold_up_the_rest(deployed_lab):
    token = secrets.token_hex(8)
    message = f"To: {RECIPIENT}\nSubject: after junk {token}\n\n{token}\n"
    # A message spooled behind the junk, as a failed send would have left it.
    item = {"rcpts": [RECIPIENT], "data": base64.b64encode(message.encode()).decode()}
    junk = deployed_lab.ssh(
        "sensor-1", f"mkdir -p {SPOOL} && printf '{{not json' > {SPOOL}/000-junk.json"
    )
    assert junk.returncode == 0
    spooled = deployed_lab.ssh("sensor-1", f"cat > {SPOOL}/001-mail.json", stdin=json.dumps(item))
    assert spooled.returncode == 0
    flush = deployed_lab.ssh("sensor-1", "sensormail-send -q")
    assert flush.returncode == 65, flush.stderr  # EX_DATAERR: something was set aside
    assert "000-junk.json: moved to" in flush.stderr
    assert deployed_lab.ssh("sensor-1", f"ls {SPOOL}/failed").stdout.split() == ["000-junk.json"]
    assert _spooled_on(deployed_lab, "sensor-1") == ["failed"]
    assert lab.arrived(token, timeout=30), "the message behind the junk did not arrive"
