"""Pushing rendered host files; secrets without ever showing their content."""

from __future__ import annotations

import hashlib
from io import StringIO
from pathlib import PurePosixPath

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations import files

from ..render import HostFile

__all__ = ["push", "secret"]


@operation()
def secret(dest: str, content: str, mode: str = "0600"):
    """
    Install a file holding a secret, owned by root.

    + dest: remote path, inside a directory only root can enter
    + content: the file's text
    + mode: its permissions

    Unlike ``files.put`` this never prints the content, not even with
    ``--diff``: the change is reported by path only.
    """
    digest = hashlib.sha256(content.encode()).hexdigest()
    current = host.get_fact(File, path=dest)
    if current and host.get_fact(Sha256File, path=dest) == digest:
        if int(str(current["mode"]), 8) == int(mode, 8) and current["user"] == "root":
            host.noop(f"{dest} is up to date")
            return
    else:
        yield FileUploadCommand(StringIO(content), dest)
    yield StringCommand("chown", "root:root", QuoteString(dest))
    yield StringCommand("chmod", mode, QuoteString(dest))


def push(
    host_files: list[HostFile], private_dirs: tuple[str, ...] = ()
) -> dict[str, OperationMeta]:
    """Upload each file; return its operation by path.

    Files are uploaded first and get their mode after, so the directories
    holding secrets are made 0700 beforehand: nobody else can enter them.
    """
    for directory in private_dirs:
        files.directory(
            name=f"Keep {directory} private (0700)", path=directory, mode="0700", user="root"
        )
    ops = {}
    for f in host_files:
        name = f"Install {f.path}"
        if f.secret:
            if not any(PurePosixPath(f.path).is_relative_to(d) for d in private_dirs):
                raise ValueError(f"{f.path}: a secret outside a private directory")
            ops[f.path] = secret(name=name, dest=f.path, content=f.content, mode=f.mode)
        else:
            ops[f.path] = files.put(
                name=name, src=StringIO(f.content), dest=f.path, mode=f.mode, user="root",
                group="root",
            )  # fmt: skip
    return ops
