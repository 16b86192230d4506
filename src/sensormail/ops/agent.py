"""The send agent on a sensor: sensormail-send and the timer flushing its spool."""

from __future__ import annotations

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, systemd
from pyinfra.operations.util import any_changed

__all__ = ["activate", "install"]

TIMER = "sensormail-flush.timer"


def install() -> None:
    apt.packages(
        name="Install Python for the send agent",
        packages=["python3", "ca-certificates"],
        extra_install_args="--no-install-recommends",
        update=True,
        cache_time=3600,
    )


def activate(units: list[OperationMeta]) -> None:
    systemd.daemon_reload(name="Reload systemd for the spool timer", _if=any_changed(*units))
    systemd.service(
        name=f"Enable and start {TIMER}",
        service=TIMER,
        running=True,
        enabled=True,
    )
