"""`sensormail …`: the operator's commands. Each subcommand is a plain function."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from .store import Store, StoreError

__all__ = ["main"]


def pki_status(args: argparse.Namespace) -> int:
    """Show every host's credentials; non-zero exit if any expire within --warn-days."""
    store = Store()
    records = store.load_registry()
    if not records:
        print(f"no hosts registered in {store.path}", file=sys.stderr)
        return 1
    now = dt.datetime.now(dt.UTC)
    expiring = 0
    print(f"{'host':<20} {'role':<8} {'mode':<5} {'address':<16} {'cert expires':<26} days left")
    for name, rec in sorted(records.items()):
        days = (dt.datetime.fromisoformat(rec.not_after) - now).days
        expiring += days < args.warn_days
        print(
            f"{name:<20} {rec.role:<8} {rec.mode:<5} {rec.address:<16} {rec.not_after:<26} {days}"
        )
    return 1 if expiring else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sensormail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pki = commands.add_parser("pki", help="the PKI store and fleet registry").add_subparsers(
        dest="pki_command", required=True
    )
    status = pki.add_parser("status", help=pki_status.__doc__, description=pki_status.__doc__)
    status.add_argument("--warn-days", type=int, default=30, metavar="N")
    status.set_defaults(func=pki_status)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except StoreError as exc:
        print(f"sensormail: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
