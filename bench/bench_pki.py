"""bench-pki: `sensormail pki sync` for 10,000 sensors, and easy-rsa side by side.

    make bench-pki            (or: .venv/bin/python bench/bench_pki.py [--sensors N] [--runs R])

Figures, not a test. Both tools run in this one process tree on this machine,
one after the other, writing to the same file system, so noise hits both.

- ours: `sensormail pki sync -i INVENTORY` on a generated pyinfra inventory,
  timed as the operator runs it (a fresh process: inventory loading, every
  credential a sensor needs, atomic writes and the file-system sync included),
  from nothing, R times in fresh directories; then the same command again,
  which has nothing to do.
- easy-rsa 3 (Debian's): `build-client-full NAME nopass`, EC prime256v1 keys
  like ours, half of its certificates before our runs and half after, so a
  drift in this VM's speed hits both sides alike.

This VM's root file system is ext4 without a journal. There, allocating an
inode skips every inode of its block group freed in the last 30 s, and each
skip costs a lookup: a run placed where 10,000 files were just deleted pays
up to 0.4 ms of kernel time per file (measured: 10,000 creates in 4 s instead
of 0.25 s). So the bench deletes nothing while it measures: each run gets a
fresh directory under `.lab/bench/` (which carries ext4's "top directory"
flag, so runs are spread over the disk), all are deleted at the end, and a
bench started within 31 s of that cleanup waits until it has aged out.

The last line is machine-readable:
bench-pki sensors=N seconds=S easyrsa_ms_per_cert=E ours_ms_per_cert=O ratio=R
where S is the median run, O our whole per-sensor cost (S / sensors: cert
and both keys, everything the sync does), and R = E / O.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    done = subprocess.run(
        [str(Path(sys.executable).parent / "sensormail"), "pki", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"bench-pki: sensormail pki {' '.join(args)} failed:\n{done.stderr}")
    return seconds


def _cpu_check() -> float:
    """Microseconds per P-256 key pair in this process: how fast this VM's CPU is now.

    The host's speed swings by a third from one minute to the next; this figure,
    taken before and after, tells a slow moment from a slow change.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    started = time.perf_counter()
    for _ in range(2000):
        ec.generate_private_key(ec.SECP256R1())
    return (time.perf_counter() - started) / 2000 * 1e6


SCRATCH = ROOT / ".lab" / "bench"
CLEANED = SCRATCH / ".cleaned"  # when the last bench deleted its runs
AGE_OUT = 31.0  # seconds until ext4 stops skipping freed inodes (see above)


def _scratch() -> Path:
    """A fresh directory for one run; removed by `_clean_up`, never while measuring."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    # Not ext4, or no chattr: the directory is used as it is.
    subprocess.run(["chattr", "+T", str(SCRATCH)], check=False, capture_output=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH))


def _clean_up() -> None:
    """Delete every run (this bench's, or an interrupted one's) and note when."""
    runs = list(SCRATCH.glob("run-*")) if SCRATCH.is_dir() else []
    for run in runs:
        shutil.rmtree(run, ignore_errors=True)
    if runs:
        os.sync()
        CLEANED.write_text(f"{time.time()}\n")


def _wait_for_age_out() -> None:
    try:
        since = time.time() - float(CLEANED.read_text())
    except (OSError, ValueError):
        return
    if 0 <= since < AGE_OUT:
        wait = AGE_OUT - since
        print(f"bench-pki: waiting {wait:.0f} s for the last cleanup to age out", file=sys.stderr)
        time.sleep(wait)


def ours(sensors: int, runs: int) -> tuple[list[float], float]:
    """Seconds for each sync from nothing, and for one rerun with nothing to do."""
    firsts, rerun = [], 0.0
    for run in range(runs):
        project = _scratch()
        (project / "inventory").mkdir(parents=True)
        (project / "deploy.py").write_text("")
        inventory = project / "inventory" / "bench.py"
        inventory.write_text(_inventory(sensors))
        firsts.append(_sensormail(project, "sync", "-i", str(inventory)))
        files = sum(1 for p in (project / "pki" / "hosts").iterdir())
        if files != sensors + 1:
            raise SystemExit(f"bench-pki: {files} bundles written for {sensors} sensors")
        if run == 0:
            rerun = _sensormail(project, "sync", "-i", str(inventory))
    return firsts, rerun


def easyrsa(certs: int) -> list[float]:
    """Seconds for each of `certs` certificates, in one easy-rsa PKI."""
    if not EASYRSA.exists():
        raise SystemExit("bench-pki: easy-rsa is not installed (make deps)")
    workdir = _scratch()
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
    times = []
    for i in range(certs):
        started = time.perf_counter()
        run("build-client-full", f"s{i:05d}", "nopass")
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3, help="syncs from nothing (median)")
    parser.add_argument("--easyrsa-certs", type=int, default=20)
    args = parser.parse_args()
    _clean_up()  # what an interrupted bench left
    _wait_for_age_out()
    try:
        cpu_before = _cpu_check()
        before = easyrsa(args.easyrsa_certs // 2)
        firsts, rerun = ours(args.sensors, args.runs)
        after = easyrsa(args.easyrsa_certs - args.easyrsa_certs // 2)
        cpu_after = _cpu_check()
    finally:
        _clean_up()
    per_cert_e = statistics.mean(before + after)
    first = statistics.median(firsts)
    per_sensor_o = first / args.sensors
    runs = ", ".join(f"{t:.2f}" for t in firsts)
    print(f"ours:     pki sync, {args.sensors} sensors from nothing: {runs} s (median {first:.2f})")
    print(f"ours:     pki sync again, nothing to do: {rerun:.2f} s")
    print(
        f"easy-rsa: build-client-full, {len(before)} certs before and {len(after)} after: "
        f"{statistics.mean(before) * 1000:.0f} and {statistics.mean(after) * 1000:.0f} ms each"
    )
    print(
        f"cpu check: one P-256 key pair in {cpu_before:.1f} us before, {cpu_after:.1f} us after "
        "(about 13 when the host is quiet)"
    )
    print(
        f"bench-pki sensors={args.sensors} seconds={first:.3f} "
        f"easyrsa_ms_per_cert={per_cert_e * 1000:.2f} ours_ms_per_cert={per_sensor_o * 1000:.4f} "
        f"ratio={per_cert_e / per_sensor_o:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
