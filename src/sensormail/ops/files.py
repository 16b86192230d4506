"""Pushing rendered host files."""

from __future__ import annotations

from io import StringIO
from pathlib import PurePosixPath

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from ..render import HostFile

__all__ = ["push"]


def push(host_files: list[HostFile], private_dirs: tuple[str, ...] = ()) -> list[OperationMeta]:
    """Upload each file; directories holding secrets exist as 0700 beforehand.

    pyinfra sets a file's mode after the upload, so a secret must land in a
    directory nobody else can enter.
    """
    for directory in private_dirs:
        files.directory(
            name=f"Keep {directory} private (0700)", path=directory, mode="0700", user="root"
        )
    for f in host_files:
        if f.secret and not any(
            PurePosixPath(f.path).is_relative_to(d) for d in (*private_dirs, "/etc/wireguard")
        ):
            raise ValueError(f"{f.path}: a secret outside a private directory")
    return [
        files.put(
            name=f"Install {f.path}",
            src=StringIO(f.content),
            dest=f.path,
            mode=f.mode,
            user="root",
            group="root",
        )
        for f in host_files
    ]
