"""`sensormail …`: the operator's commands. Each subcommand is a plain function."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from cryptography import x509

from . import inventory
from .fleet import FleetError, build_fleet
from .store import Store, StoreError, default_dir

__all__ = ["main"]


def _store(args: argparse.Namespace, existing: bool = False) -> Store:
    """The project's store; with `existing`, one that a sync has made (none is made here)."""
    hint = Path(args.inventory).resolve().parent if getattr(args, "inventory", None) else None
    store = Store(default_dir(hint))
    made = store.registry_path.exists() or (store.ca_dir / "root.crt").exists()
    if existing and not made:
        raise StoreError(
            f"no store at {store.path}: run this in the project (the directory holding "
            "deploy.py and inventory/), give -i INVENTORY, or set SENSORMAIL_PKI_DIR"
        )
    return store


def _read_inventory(path: str, override: dict | None = None) -> list:
    if not Path(path).is_file():
        raise StoreError(f"no inventory file {path}")
    return inventory.read(Path(path), override)


def _progress(started: float):
    """A progress bar on stderr for runs long enough to need one."""
    interactive = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        if total < 1000:
            return
        width = 30
        filled = width * done // total
        line = (
            f"\rsensormail: [{'#' * filled}{'.' * (width - filled)}] "
            f"{done}/{total} hosts {time.monotonic() - started:.1f}s"
        )
        if interactive:
            print(line, end="\n" if done == total else "", file=sys.stderr, flush=True)
        elif done == total:
            print(line.lstrip("\r"), file=sys.stderr)

    return show


def pki_status(args: argparse.Namespace) -> int:
    """Show every host's credentials; non-zero exit if any expire within --warn-days."""
    store = _store(args, existing=True)
    records = store.load_registry()
    if not records:
        print(f"sensormail: no hosts registered in {store.path}", file=sys.stderr)
        return 1
    now = dt.datetime.now(dt.UTC)
    # With an inventory, hosts gone from it are shown but do not fail the check.
    current = None
    if args.inventory:
        current = {entry.name for entry, _ in _read_inventory(args.inventory)}
    rows = []
    for name in ("root", "issuing"):
        path = store.ca_dir / f"{name}.crt"
        if path.exists():
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            rows.append((f"({name} CA)", "ca", "", "", cert.not_valid_after_utc, ""))
    expiring = []
    crl_path = store.ca_dir / "crl.pem"
    if crl_path.exists():
        # Renewed by every sync long before its next update: only a lapsed one fails the check.
        next_update = x509.load_pem_x509_crl(crl_path.read_bytes()).next_update_utc
        lapsed = next_update is not None and next_update <= now
        if lapsed:
            expiring.append("(CRL)")
        state = "lapsed: run sensormail pki sync" if lapsed else "next update; renewed by a sync"
        if next_update is not None:
            rows.append(("(CRL)", "crl", "", "", next_update, state))
    for name, rec in sorted(records.items()):
        state = f"revoked {rec.revoked[:10]}" if rec.revoked else ""
        if current is not None and name not in current:
            state = "not in the inventory"
        rows.append(
            (name, rec.role, rec.mode, rec.address, dt.datetime.fromisoformat(rec.not_after), state)
        )
    print(f"{'host':<24} {'role':<8} {'mode':<5} {'address':<15} {'cert expiry':<17} days left")
    for name, role, mode, address, expiry, state in rows:
        days = (expiry - now).days
        if days < args.warn_days and not state:
            expiring.append(name)
        print(
            f"{name:<24} {role:<8} {mode:<5} {address:<15} {expiry:%Y-%m-%d %H:%M} "
            f"{days:>9} {state}".rstrip()
        )
    if expiring:
        print(
            f"sensormail: {len(expiring)} expire within {args.warn_days} days: "
            + ", ".join(expiring),
            file=sys.stderr,
        )
        return 1
    return 0


def pki_revoke(args: argparse.Namespace) -> int:
    """Revoke a sensor: recorded now, applied to the CRL and every layer on the next deploy."""
    rec = _store(args, existing=True).revoke(args.name)
    print(f"sensormail: {rec.name} revoked ({rec.revoked}); deploy to apply it everywhere")
    return 0


def pki_forget(args: argparse.Namespace) -> int:
    """Drop a revoked (or expired) host from the registry, freeing its name and address."""
    listed = [entry.name for entry, _ in _read_inventory(args.inventory)]
    if args.name in listed:
        # Forgotten but listed, the next deploy would issue it new keys and push them to it.
        print(
            f"sensormail: host {args.name!r} is still in {args.inventory}; remove it from the "
            "inventory and deploy first (a listed host would get new keys on the next deploy)",
            file=sys.stderr,
        )
        return 1
    _store(args, existing=True).forget(args.name)
    print(f"sensormail: {args.name} forgotten")
    return 0


def pki_sync(args: argparse.Namespace) -> int:
    """Do to the store exactly what a deploy does, without touching any host."""
    override = {"rotate": args.rotate} if args.rotate else {}
    started = time.monotonic()
    hosts = _read_inventory(args.inventory, override)
    fleet = build_fleet(entry for entry, _ in hosts)
    store = _store(args)
    rotate = inventory.rotation(data for _, data in hosts)
    new_store = not (store.ca_dir / "root.crt").exists()
    creds = store.sync(fleet, rotate=rotate, progress=_progress(started))
    new, reissued = creds.new, creds.reissued
    what = ", ".join(
        part
        for part in (
            "a new store with a new CA" if new_store else "",
            f"{len(new)} new" if new else "",
            f"{len(reissued)} renewed or rotated" if reissued else "",
            "CRL re-issued" if creds.crl_reissued and not new_store else "",
        )
        if part
    )
    revoked = sum(1 for host in creds.hosts.values() if host.revoked)
    cut_off = f", {revoked} revoked" if revoked else ""
    print(
        f"sensormail: {len(creds.hosts)} hosts in sync{cut_off} in {store.path} "
        f"({what or 'nothing changed'}; {time.monotonic() - started:.2f}s)",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sensormail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pki = commands.add_parser("pki", help="the PKI store and fleet registry").add_subparsers(
        dest="pki_command", required=True
    )

    def command(func, name: str) -> argparse.ArgumentParser:
        sub = pki.add_parser(name, help=func.__doc__, description=func.__doc__)
        sub.set_defaults(func=func)
        return sub

    status = command(pki_status, "status")
    status.add_argument(
        "--warn-days", type=_days, default=30, metavar="N",
        help="exit 1 if a certificate expires within N days (default 30)",
    )  # fmt: skip
    status.add_argument(
        "-i", "--inventory", help="the fleet's inventory: its store, and only its hosts count"
    )
    revoke = command(pki_revoke, "revoke")
    revoke.add_argument("name", help="the sensor's host name")
    revoke.add_argument("-i", "--inventory", help="find the project's store from this inventory")
    forget = command(pki_forget, "forget")
    forget.add_argument("name", help="the host's name")
    forget.add_argument(
        "-i", "--inventory", required=True, help="the fleet's inventory, the host no longer in it"
    )
    sync = command(pki_sync, "sync")
    sync.add_argument("-i", "--inventory", required=True, help="the pyinfra inventory file")
    sync.add_argument("--rotate", metavar="NAME[,NAME…]|all", help="force new keys for these")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (StoreError, FleetError) as exc:
        print(f"sensormail: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `pki status | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _days(text: str) -> int:
    days = int(text)
    if days < 0:
        raise argparse.ArgumentTypeError(f"a number of days, 0 or more, not {days}")
    return days


if __name__ == "__main__":
    sys.exit(main())
