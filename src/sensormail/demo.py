"""`make demo`: one message from each lab sensor, shown as it arrived at `mx`.

Runs after `make lab` and the deploy; sends with the sensors' own
`sensormail-send`, exactly as a sensor application would.
"""

from __future__ import annotations

import secrets
import sys

from . import lab

SENSORS = ("sensor-1", "sensor-2")
TIMEOUT = 60


def main() -> int:
    recipient = f"ops@{lab.RECIPIENT_DOMAIN}"
    tokens = {}
    for sensor in SENSORS:
        tokens[sensor] = secrets.token_hex(6)
        message = (
            f"To: {recipient}\n"
            f"Subject: demo reading from {sensor} ({tokens[sensor]})\n\n"
            f"temperature=21.5 humidity=40 token={tokens[sensor]}\n"
        )
        sent = lab.ssh(sensor, "sensormail-send -t", stdin=message)
        if sent.returncode != 0:
            print(f"demo: {sensor}: sensormail-send failed: {sent.stderr}", file=sys.stderr)
            return 1
        print(f"demo: {sensor}: sent with sensormail-send -t", file=sys.stderr)
    for sensor, token in tokens.items():
        found = lab.arrived(token, TIMEOUT)
        if found is None:
            print(f"demo: {sensor}'s message did not arrive in {TIMEOUT}s", file=sys.stderr)
            return 1
        path, text = found
        print(f"\n===== mx:{path} (from {sensor}) =====")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
