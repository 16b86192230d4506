"""`make demo`: one message from each lab sensor, shown as it arrived at `mx`.

Runs after `make lab` and the deploy; sends with the sensors' own
`sensormail-send`, exactly as a sensor application would.
"""

from __future__ import annotations

import secrets
import sys
import time

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
    deadline = time.monotonic() + TIMEOUT
    for sensor, token in tokens.items():
        while True:
            found = lab.ssh("mx", f"grep -rl -- {token} {lab.MAILDIR}/new/ | head -1").stdout
            if found.strip():
                break
            if time.monotonic() > deadline:
                print(f"demo: {sensor}'s message did not arrive in {TIMEOUT}s", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"\n===== mx:{found.strip()} (from {sensor}) =====")
        print(lab.ssh("mx", f"cat {found.strip()}").stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
