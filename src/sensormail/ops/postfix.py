"""Postfix on the gateway: the sensor listener and the relay onward."""

from __future__ import annotations

import hashlib
from io import StringIO
from pathlib import PurePosixPath

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import Sha256File
from pyinfra.operations import systemd
from pyinfra.operations.util import any_changed

from ..render import POSTFIX_DIR, HostFile
from . import packages as packages_op

__all__ = ["MAIN_FILES", "activate", "install", "staged_config"]

# Postfix reads these two at start and reload; they are checked before going live.
MAIN_FILES = ("/etc/postfix/main.cf", "/etc/postfix/master.cf")
STAGE_DIR = f"{POSTFIX_DIR}/staged"


def install() -> None:
    packages_op.install("Install Postfix", ["postfix", "ca-certificates"])


@operation()
def staged_config(config_files: list[HostFile], stage_dir: str = STAGE_DIR):
    """
    Install main.cf and master.cf only once `postfix check` accepts them.

    + config_files: the rendered main.cf and master.cf
    + stage_dir: where the candidate configuration is checked (an absolute path)

    The candidate is uploaded to ``stage_dir`` and checked there with
    ``postfix -c``; only then does it replace the live files. A rejected
    configuration fails the operation and leaves the running one untouched.
    """
    stale = [
        f
        for f in config_files
        if host.get_fact(Sha256File, path=f.path) != hashlib.sha256(f.content.encode()).hexdigest()
    ]
    if not stale:
        host.noop("Postfix main.cf and master.cf are up to date")
        return
    yield StringCommand("install", "-d", "-m", "0755", QuoteString(stage_dir))
    for f in config_files:
        name = PurePosixPath(f.path).name
        yield FileUploadCommand(StringIO(f.content), f"{stage_dir}/{name}")
    yield StringCommand("postfix", "-c", QuoteString(stage_dir), "check")
    for f in config_files:
        name = PurePosixPath(f.path).name
        yield StringCommand(
            "install", "-m", f.mode, QuoteString(f"{stage_dir}/{name}"), QuoteString(f.path)
        )


def activate(changed: list[OperationMeta], unit: OperationMeta) -> None:
    """Start Postfix; reload it when its files changed, restart when its unit did."""
    systemd.daemon_reload(name="Reload systemd for the Postfix drop-in", _if=unit.did_change)
    systemd.service(
        name="Enable and start Postfix",
        service="postfix.service",
        running=True,
        enabled=True,
    )
    # The drop-in orders Postfix after the tunnel: a restart makes it take hold.
    systemd.service(
        name="Restart Postfix for its changed unit",
        service="postfix.service",
        restarted=True,
        _if=unit.did_change,
    )
    systemd.service(
        name="Reload Postfix for the changed configuration",
        service="postfix.service",
        reloaded=True,
        _if=any_changed(*changed),
    )
