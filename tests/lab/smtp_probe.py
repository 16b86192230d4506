"""Run on a sensor (python3 - MODE SENDER < smtp_probe.py): talk to the gateway by hand.

MODE is "cert" (this sensor's own certificate), "wrongname" (the same, but expecting
another gateway name), "nocert" (none), or "selfsigned" /
"unlisted" (the certificate and key given in SELFSIGNED_PEM: of no fleet CA, or
of the fleet CA but not issued to any sensor). Prints one line: the outcome of MAIL+RCPT.
"""

import importlib.machinery
import importlib.util
import ssl
import sys
import tempfile

loader = importlib.machinery.SourceFileLoader("agent", "/usr/local/bin/sensormail-send")
spec = importlib.util.spec_from_loader("agent", loader)
agent = importlib.util.module_from_spec(spec)
loader.exec_module(agent)

mode, sender = sys.argv[1], sys.argv[2]
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 20
context = ssl.create_default_context(cafile=agent.CA_FILE)
if mode in ("cert", "wrongname"):
    context.load_cert_chain(agent.CERT_FILE, agent.KEY_FILE)
if mode == "wrongname":
    # The agent must check the gateway's certificate names the gateway it expects.
    agent.GATEWAY_NAME = "impostor.lab.example"
elif mode in ("selfsigned", "unlisted"):
    # SELFSIGNED_PEM (certificate and key) is prepended to this script by the test.
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as pem:
        pem.write(SELFSIGNED_PEM)  # noqa: F821
        pem.flush()
        context.load_cert_chain(pem.name)
try:
    with agent._GatewaySMTP(agent.GATEWAY_ADDRESS, agent.PORT, local_hostname="probe.invalid",
                            context=context, timeout=timeout) as smtp:  # fmt: skip
        code, _ = smtp.mail(sender)
        if code >= 400:
            print(f"MAIL {code}")
            sys.exit(0)
        code, _ = smtp.rcpt("ops@lab.example")
        print(f"RCPT {code}")
except Exception as exc:  # the outcome is what we report
    print(f"ERROR {type(exc).__name__}: {exc}")
