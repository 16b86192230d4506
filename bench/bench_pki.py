"""bench-pki: `sensormail pki sync` for 10,000 sensors, and easy-rsa side by side.

    make bench-pki            (or: .venv/bin/python bench/bench_pki.py [--sensors N])

Figures, not a test. Both tools run in this one process tree on this machine,
one after the other, writing to the same file system, so noise hits both.

- ours: `sensormail pki sync -i INVENTORY` on a generated pyinfra inventory,
  timed as the operator runs it (a fresh process: inventory loading, every
  credential a sensor needs, atomic writes and the file-system sync included);
  then the same command again, which has nothing to do.
- easy-rsa 3 (Debian's): `build-client-full NAME nopass` for a handful of
  sensors, EC prime256v1 keys like ours.

The last line is machine-readable:
bench-pki sensors=N seconds=S easyrsa_ms_per_cert=E ours_ms_per_cert=O ratio=R
where O is our whole per-sensor cost (seconds / sensors, cert and both keys),
and R = E / O.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EASYRSA = Path("/usr/share/easy-rsa/easyrsa")
ROOT = Path(__file__).resolve().parents[1]


def _inventory(sensors: int) -> str:
    # A /18 holds 16,382 hosts; real fleets this size would size their subnet likewise.
    return (
        "gateway = [('gateway', {'ssh_hostname': '192.0.2.1',\n"
        "    'sensormail_vpn_subnet': '10.64.0.0/18'})]\n"
        f"sensors = [(f's{{i:05d}}', {{'sensormail_sender': f's{{i:05d}}@sensors.example.org',\n"
        f"    'sensormail_vpn_subnet': '10.64.0.0/18'}}) for i in range({sensors})]\n"
    )


def _settle() -> None:
    """Flush what earlier work left dirty, so neither tool pays for it."""
    os.sync()
    time.sleep(1)


def _sensormail(project: Path, *args: str) -> float:
    env = dict(os.environ, SENSORMAIL_CA_PASSPHRASE="bench only", SENSORMAIL_PKI_DIR="")
    _settle()
    started = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "sensormail"), "pki", *args],
        cwd=project,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def ours(workdir: Path, sensors: int) -> tuple[float, float]:
    project = workdir / "project"
    (project / "inventory").mkdir(parents=True)
    (project / "deploy.py").write_text("")
    inventory = project / "inventory" / "bench.py"
    inventory.write_text(_inventory(sensors))
    first = _sensormail(project, "sync", "-i", str(inventory))
    files = sum(1 for p in (project / "pki").rglob("*") if p.is_file())
    if files < sensors:
        raise SystemExit(f"bench-pki: only {files} files written for {sensors} sensors")
    rerun = _sensormail(project, "sync", "-i", str(inventory))
    return first, rerun


def easyrsa(workdir: Path, certs: int) -> float:
    if not EASYRSA.exists():
        raise SystemExit("bench-pki: easy-rsa is not installed (make deps)")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("EASYRSA")
    } | {  # exporting EASYRSA_REQ_CN would make build-client-full fail
        "EASYRSA_BATCH": "1",
        "EASYRSA_PKI": str(workdir / "easyrsa"),
        "EASYRSA_ALGO": "ec",
        "EASYRSA_CURVE": "prime256v1",
    }

    def run(*args: str) -> None:
        subprocess.run([str(EASYRSA), *args], env=env, check=True, capture_output=True, cwd=workdir)

    run("init-pki")
    run("build-ca", "nopass")
    _settle()
    started = time.perf_counter()
    for i in range(certs):
        run("build-client-full", f"s{i:05d}", "nopass")
    return (time.perf_counter() - started) / certs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--easyrsa-certs", type=int, default=20)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sensormail-bench-", dir=ROOT / ".lab"))
    try:
        first, rerun = ours(workdir, args.sensors)
        per_cert_e = easyrsa(workdir, args.easyrsa_certs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    per_sensor_o = first / args.sensors
    print(f"ours:     pki sync, {args.sensors} sensors from nothing: {first:.2f} s")
    print(f"ours:     pki sync again, nothing to do: {rerun:.2f} s")
    print(
        f"easy-rsa: build-client-full, {args.easyrsa_certs} certs: {per_cert_e * 1000:.0f} ms each"
    )
    print(
        f"bench-pki sensors={args.sensors} seconds={first:.3f} "
        f"easyrsa_ms_per_cert={per_cert_e * 1000:.2f} ours_ms_per_cert={per_sensor_o * 1000:.4f} "
        f"ratio={per_cert_e / per_sensor_o:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
