"""The deploy steps per role: every service's install, then configure, then activate."""

from __future__ import annotations

import sys

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError

from .. import render
from ..fleet import GATEWAY_GROUP, SENSOR_GROUP, FleetError
from ..store import StoreError
from . import agent, postfix, wireguard
from .context import fleet_and_credentials
from .files import push

__all__ = ["gateway", "sensor", "sensormail"]


@deploy("sensormail gateway")
def gateway() -> None:
    """WireGuard hub and the Postfix relay accepting only fleet sensors."""
    fleet, creds = fleet_and_credentials()
    host_files = render.gateway_files(fleet, creds)
    main_files = [f for f in host_files if f.path in postfix.MAIN_FILES]
    other_files = [f for f in host_files if f.path not in postfix.MAIN_FILES]

    wireguard.install()
    postfix.install()

    pushed = push(other_files, private_dirs=("/etc/wireguard", render.POSTFIX_PRIVATE))
    # Maps and keys are in place before main.cf names them (postfix check reads them).
    main_cf = postfix.staged_config(
        name="Check and install Postfix main.cf and master.cf", config_files=main_files
    )

    wg_conf = pushed.pop(render.WG_CONF)
    unit = pushed.pop(render.POSTFIX_DROPIN)
    wireguard.activate(wg_conf)
    postfix.activate(changed=[main_cf, *pushed.values()], unit=unit)


@deploy("sensormail sensor")
def sensor() -> None:
    """WireGuard peer of the gateway, and the send agent with its spool timer."""
    fleet, creds = fleet_and_credentials()
    if creds[host.name].revoked:
        logger.warning(f"{host.name}: revoked; left as it is (the gateway no longer admits it)")
        return
    host_files = render.sensor_files(fleet, creds, host.name)

    wireguard.install()
    agent.install()

    pushed = push(host_files, private_dirs=("/etc/wireguard", render.SENSOR_PRIVATE))

    wireguard.activate(pushed[render.WG_CONF])
    agent.activate([pushed[p] for p in render.FLUSH_UNITS])


def sensormail() -> None:
    """Deploy whatever the current host's inventory groups make it."""
    try:
        # The whole inventory is validated and the store synced before any
        # operation exists: a bad inventory stops the run with nothing pushed.
        fleet_and_credentials()
    except (FleetError, StoreError) as exc:
        # The operator's mistake, not a crash: say it plainly, then fail the run.
        if not getattr(exc, "reported", False):  # once, not once per host
            print(f"sensormail: {exc}", file=sys.stderr, flush=True)
            exc.reported = True  # type: ignore[attr-defined]
        raise DeployError("sensormail stopped the run before any change (see above)") from None
    if GATEWAY_GROUP in host.groups:
        gateway()
    elif SENSOR_GROUP in host.groups:
        sensor()
