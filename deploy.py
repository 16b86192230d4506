"""pyinfra entry point: `pyinfra inventory/lab.py deploy.py`.

Thin on purpose: the steps live in `sensormail.ops` so an operator's own
deploy file can call them the same way.
"""

from sensormail.ops import sensormail

sensormail()
