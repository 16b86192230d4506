"""pyinfra deploy steps: `@deploy` functions an operator can call from a deploy file.

    from sensormail.ops import sensormail
    sensormail()          # does what the host's inventory groups ask for

or per role: `gateway()`, `sensor()`. Each runs its services' phases in order:
install, configure (validated before it goes live), activate.
"""

from .roles import gateway, sensor, sensormail

__all__ = ["gateway", "sensor", "sensormail"]
