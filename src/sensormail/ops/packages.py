"""Debian packages, the same way for every service."""

from __future__ import annotations

from pyinfra.operations import apt

__all__ = ["install"]


def install(name: str, packages: list[str]) -> None:
    # Recommends would pull a kernel and udev into a small host: never wanted here.
    apt.packages(
        name=name,
        packages=packages,
        extra_install_args="--no-install-recommends",
        update=True,
        cache_time=3600,
    )
