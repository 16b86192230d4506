# sensormail — every entry point. Run as root on Debian 12 (the lab needs podman).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYINFRA := $(VENV)/bin/pyinfra
# Controller packages: podman (lab hosts), runc (crun cannot run systemd here),
# debootstrap (lab image), python3-venv (the venv), openssl (certificate checks in tests), easy-rsa (bench).
APT_PACKAGES := python3-venv podman runc netavark aardvark-dns iptables debootstrap openssh-client openssl easy-rsa make git

.PHONY: deps apt venv lab lab-down deploy demo test test-unit test-lab lint fmt bench-pki

deps: apt venv

apt: .lab/apt.stamp
.lab/apt.stamp:
	@mkdir -p -m 700 .lab
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES)
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

lab: deps
	$(PY) -m sensormail.lab up

lab-down: venv
	$(PY) -m sensormail.lab down

deploy: venv
	$(PYINFRA) -y inventory/lab.py deploy.py

# Lab up, deploy, one mail from each sensor, shown as it arrived at mx.
demo: deps
	$(PY) -m sensormail.lab up
	$(PYINFRA) -y inventory/lab.py deploy.py
	$(PY) -m sensormail.demo

# Everything: lint, unit tests, and the lab end-to-end tests (one lab for all).
test: deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

test-unit: venv
	$(PY) -m pytest -m 'not lab'

test-lab: deps
	$(PY) -m pytest -m lab

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

fmt: venv
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# PKI benchmark: pki sync for 10,000 sensors vs easy-rsa; prints figures, asserts nothing.
bench-pki: deps
	$(PY) bench/bench_pki.py
