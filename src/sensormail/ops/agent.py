"""The send agent on a sensor: sensormail-send and the timer flushing its spool."""

from __future__ import annotations

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import systemd
from pyinfra.operations.util import any_changed

from . import packages as packages_op

__all__ = ["activate", "install"]

TIMER = "sensormail-flush.timer"


def install() -> None:
    packages_op.install("Install Python for the send agent", ["python3", "ca-certificates"])


def activate(units: list[OperationMeta]) -> None:
    systemd.daemon_reload(name="Reload systemd for the spool timer", _if=any_changed(*units))
    systemd.service(
        name=f"Enable and start {TIMER}",
        service=TIMER,
        running=True,
        enabled=True,
    )
