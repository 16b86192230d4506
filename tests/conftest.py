"""Shared fixtures. Lab tests (tests/lab, tests/testinfra) share one deployed lab per run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sensormail import lab

ROOT = Path(__file__).resolve().parents[1]
LAB_DIRS = (ROOT / "tests" / "lab", ROOT / "tests" / "testinfra")


def pytest_configure(config: pytest.Config) -> None:
    # testinfra reaches lab hosts over the same SSH setup as the deploy.
    if getattr(config.option, "ssh_config", None) is None:
        config.option.ssh_config = str(lab.lab_dir() / "ssh_config")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(Path(item.path).is_relative_to(d) for d in LAB_DIRS):
            item.add_marker(pytest.mark.lab)


@dataclass
class Lab:
    pki_dir: Path

    def deploy(self, *extra: str) -> subprocess.CompletedProcess:
        """Run `pyinfra inventory/lab.py deploy.py`, as an operator would."""
        env = dict(os.environ, SENSORMAIL_PKI_DIR=str(self.pki_dir))
        pyinfra = str(Path(sys.executable).parent / "pyinfra")
        return subprocess.run(
            [pyinfra, "-y", "inventory/lab.py", "deploy.py", *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )

    ssh = staticmethod(lab.ssh)

    def sensormail(self, *args: str) -> subprocess.CompletedProcess:
        """The `sensormail` CLI on this lab's store."""
        env = dict(os.environ, SENSORMAIL_PKI_DIR=str(self.pki_dir))
        return subprocess.run(
            [str(Path(sys.executable).parent / "sensormail"), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )


@pytest.fixture(scope="session")
def deployed_lab(tmp_path_factory: pytest.TempPathFactory):
    """The lab, started fresh and deployed once for the whole run."""
    lab.up()
    the_lab = Lab(tmp_path_factory.mktemp("store") / "pki")
    result = the_lab.deploy()
    if result.returncode != 0:
        pytest.fail(f"first deploy failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    yield the_lab
    if os.environ.get("SENSORMAIL_KEEP_LAB") != "1":
        lab.down()
        shutil.rmtree(the_lab.pki_dir)  # a lab CA, but a CA: leave none behind
