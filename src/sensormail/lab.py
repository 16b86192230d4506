"""The podman lab: systemd containers standing in for real hosts.

Used by the tests and `make demo`. It knows nothing of the product: it only
starts four SSH-reachable Debian hosts on a fixed network and writes the SSH
material (key, known_hosts, ssh_config) that the inventory and testinfra use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HOSTS",
    "MAILDIR",
    "RECIPIENT_DOMAIN",
    "LabHost",
    "arrived",
    "down",
    "lab_dir",
    "ssh",
    "up",
]

IMAGE = "localhost/sensormail-lab:bookworm-1"
NETWORK = "sensormail-lab"
SUBNET = "10.89.60.0/24"
BRIDGE_GATEWAY = "10.89.60.1"
# Packages baked into the base image: what a freshly installed Debian host has
# plus the bits pyinfra and testinfra need. Everything else the deploy installs.
BASE_PACKAGES = "systemd,systemd-sysv,openssh-server,python3,iproute2,dbus"


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str


HOSTS = (
    LabHost("gateway", "10.89.60.10"),
    LabHost("sensor-1", "10.89.60.11"),
    LabHost("sensor-2", "10.89.60.12"),
    LabHost("mx", "10.89.60.20"),
)

# podman 4.3 here runs systemd containers only with runc and both ulimits set
# explicitly; a private containers.conf keeps /etc/containers untouched.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""


# The recipient MX: stock Postfix taking every address of the lab's recipient
# domain into one Maildir, so tests see exactly what arrived.
RECIPIENT_DOMAIN = "lab.example"
MAILDIR = f"/var/mail/vhosts/{RECIPIENT_DOMAIN}/inbox"
MX_SETUP = f"""
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends postfix >/dev/null
postconf -e \\
    myhostname=mx.{RECIPIENT_DOMAIN} \\
    mydestination=localhost \\
    inet_interfaces=all \\
    inet_protocols=ipv4 \\
    smtpd_tls_security_level=none \\
    virtual_mailbox_domains={RECIPIENT_DOMAIN} \\
    virtual_mailbox_base=/var/mail/vhosts \\
    virtual_mailbox_maps=static:{RECIPIENT_DOMAIN}/inbox/ \\
    virtual_uid_maps=static:8 \\
    virtual_gid_maps=static:8 \\
    virtual_minimum_uid=8
install -d -o mail -g mail -m 0750 /var/mail/vhosts
systemctl restart postfix
"""


def lab_dir() -> Path:
    """Where the lab keeps its SSH key, known_hosts and ssh_config."""
    env = os.environ.get("SENSORMAIL_LAB_DIR")
    if env:
        return Path(env).resolve()
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        root = Path.cwd()
    return root / ".lab"


def _log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def _podman(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, CONTAINERS_CONF=str(lab_dir() / "containers.conf"))
    proc = subprocess.run(
        ["podman", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed: {(proc.stderr or '').strip()}")
    return proc


def _podman_popen(*args: str) -> subprocess.Popen:
    env = dict(os.environ, CONTAINERS_CONF=str(lab_dir() / "containers.conf"))
    return subprocess.Popen(
        ["podman", *args], env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _build_image() -> None:
    _log(f"building base image {IMAGE} with debootstrap (about a minute, once)")
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="sensormail-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                "bookworm",
                str(rootfs),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # Host keys baked in by debootstrap would be shared by every container:
        # drop them here, each container makes its own on start.
        for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        (rootfs / "etc/machine-id").write_text("")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        env = dict(os.environ, CONTAINERS_CONF=str(lab_dir() / "containers.conf"))
        subprocess.run(
            ["podman", "import", "--change", 'CMD ["/sbin/init"]', "-", IMAGE],
            stdin=tar.stdout,
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        tar.wait()


def _ensure_network() -> None:
    inspect = _podman(
        "network",
        "inspect",
        NETWORK,
        "--format",
        "{{range .Subnets}}{{.Subnet}}{{end}}",
        check=False,
    )
    if inspect.returncode == 0 and inspect.stdout.strip() == SUBNET:
        return
    if inspect.returncode == 0:
        _podman("network", "rm", "-f", NETWORK)
    _podman("network", "create", "--subnet", SUBNET, "--gateway", BRIDGE_GATEWAY, NETWORK)


def _ensure_ssh_key(directory: Path) -> Path:
    key = directory / "id_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sensormail-lab", "-f", str(key)],
            check=True,
        )
    return key


def _exec(name: str, script: str) -> str:
    return _podman("exec", name, "sh", "-ec", script).stdout


def _wait_booted(name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = _podman("exec", name, "systemctl", "is-system-running", check=False).stdout.strip()
        if state in ("running", "degraded"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: systemd did not finish booting (state {state!r})")
        time.sleep(0.5)


def _wait_ssh(directory: Path, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(
            ["ssh", "-F", str(directory / "ssh_config"), name, "true"],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: not reachable over SSH: {proc.stderr.strip()}")
        time.sleep(0.5)


def up() -> None:
    """Start (or replace) the four lab hosts and write the SSH material."""
    directory = lab_dir()
    directory.mkdir(mode=0o700, exist_ok=True)
    (directory / "containers.conf").write_text(CONTAINERS_CONF)
    if _podman("image", "exists", IMAGE, check=False).returncode != 0:
        _build_image()
    key = _ensure_ssh_key(directory)
    pubkey = (directory / "id_ed25519.pub").read_text().strip()
    # Containers left by an earlier run (or half torn down) are replaced.
    _end_ssh_sharing(directory)
    for host in HOSTS:
        _podman("rm", "-f", "-t", "0", host.name, check=False)
    _ensure_network()
    for host in HOSTS:
        _podman(
            "run", "-d",
            "--name", host.name,
            "--hostname", host.name,
            "--network", NETWORK,
            "--ip", host.address,
            "--systemd", "always",
            "--cap-add", "NET_ADMIN",
            "--cap-add", "NET_RAW",
            "--device", "/dev/net/tun",
            IMAGE,
        )  # fmt: skip
    known_hosts = []
    mx_setup = None
    for host in HOSTS:
        _wait_booted(host.name)
        if host.name == "mx":
            mx_setup = _podman_popen("exec", "mx", "sh", "-ec", MX_SETUP)
        hostkey = _exec(
            host.name,
            f"""
            ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
            install -d -m 700 /root/.ssh
            echo '{pubkey}' > /root/.ssh/authorized_keys
            chmod 600 /root/.ssh/authorized_keys
            systemctl reset-failed ssh.service
            systemctl restart ssh.service
            cat /etc/ssh/ssh_host_ed25519_key.pub
            """,
        ).split()
        known_hosts.append(f"{host.address} {hostkey[0]} {hostkey[1]}")
    (directory / "known_hosts").write_text("\n".join(known_hosts) + "\n")
    config = []
    for host in HOSTS:
        config.append(
            f"Host {host.name}\n"
            f"  HostName {host.address}\n"
            "  User root\n"
            f"  IdentityFile {key}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {directory / 'known_hosts'}\n"
            "  StrictHostKeyChecking yes\n"
            "  ControlMaster auto\n"
            f"  ControlPath {directory}/cm-%h\n"
            "  ControlPersist 120\n"
        )
    (directory / "ssh_config").write_text("\n".join(config))
    for host in HOSTS:
        _wait_ssh(directory, host.name)
    assert mx_setup is not None
    _, err = mx_setup.communicate()
    if mx_setup.returncode != 0:
        raise RuntimeError(f"mx: setting up the recipient MTA failed: {err.strip()}")
    _log("up: " + ", ".join(f"{h.name}={h.address}" for h in HOSTS))


def _end_ssh_sharing(directory: Path) -> None:
    """Stop SSH connection-sharing masters: their hosts are about to be replaced."""
    config = directory / "ssh_config"
    for host in HOSTS:
        if config.exists():
            subprocess.run(["ssh", "-F", str(config), "-O", "exit", host.name], capture_output=True)
    for socket in directory.glob("cm-*"):
        socket.unlink(missing_ok=True)


def ssh(host: str, command: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a command on a lab host over SSH (as the deploy reaches it)."""
    return subprocess.run(
        ["ssh", "-F", str(lab_dir() / "ssh_config"), host, command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def arrived(token: str, timeout: float = 60) -> tuple[str, str] | None:
    """The (path, text) of the message at mx containing token, once it is there; None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        path = ssh("mx", f"grep -rl -- {token} {MAILDIR}/new/ | head -1").stdout.strip()
        if path:
            return path, ssh("mx", f"cat {path}").stdout
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def down() -> None:
    """Remove the lab hosts and network (the base image is kept for reuse)."""
    directory = lab_dir()
    directory.mkdir(mode=0o700, exist_ok=True)
    (directory / "containers.conf").write_text(CONTAINERS_CONF)
    config = directory / "ssh_config"
    for host in HOSTS:
        if config.exists():  # end SSH connection sharing before its host goes
            subprocess.run(["ssh", "-F", str(config), "-O", "exit", host.name], capture_output=True)
        _podman("rm", "-f", "-t", "0", host.name, check=False)
    _podman("network", "rm", "-f", NETWORK, check=False)
    for socket in directory.glob("cm-*"):
        socket.unlink(missing_ok=True)
    _log("down")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sensormail.lab", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "image"])
    args = parser.parse_args(argv)
    if shutil.which("podman") is None:
        print("lab: podman is not installed (run `make deps`)", file=sys.stderr)
        return 69
    if args.action == "up":
        up()
    elif args.action == "down":
        down()
    else:
        lab_dir().mkdir(mode=0o700, exist_ok=True)
        (lab_dir() / "containers.conf").write_text(CONTAINERS_CONF)
        if _podman("image", "exists", IMAGE, check=False).returncode != 0:
            _build_image()
    return 0


if __name__ == "__main__":
    sys.exit(main())
