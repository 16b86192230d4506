"""An inventory for real hosts: one gateway, two sensors.

    pyinfra inventory/example.py deploy.py

Copy it, replace the addresses and names, keep the groups: `gateway` (exactly
one host) and `sensors`. Every sensormail option is shown at its default with
the reason for it; delete what you do not change. Unknown `sensormail_*` keys
stop the deploy with an error naming the host and the key.
"""

# Fleet-wide options: set them on the gateway (a sensor may repeat them, but
# only with the same value).
_fleet = {
    # The WireGuard network shared by the fleet; the gateway takes its first
    # address, each sensor the lowest free one, kept for good in the registry.
    "sensormail_vpn_subnet": "10.77.0.0/24",
    # UDP port the gateway listens on for WireGuard.
    "sensormail_wg_port": 51820,
    # Port of the gateway's sensor listener (implicit TLS, on the tunnel only).
    "sensormail_submission_port": 465,
    # Lab conveniences (the CA passphrase kept in the store): never on real hosts.
    "sensormail_lab": False,
    # Lifetimes in days: the root is the long-lived trust anchor on every host,
    # the issuing CA signs hosts, host certificates are renewed automatically.
    "sensormail_root_days": 3650,
    "sensormail_issuing_days": 1825,
    "sensormail_cert_days": 365,
    # The CRL's validity; it is re-issued by runs well before it lapses.
    "sensormail_crl_days": 30,
    # Renew anything past this fraction of its lifetime, on every run.
    "sensormail_renew_after": 2 / 3,
}

gateway = [
    (
        "gateway",
        {
            # How pyinfra reaches the host (any pyinfra connection data works here).
            "ssh_hostname": "gateway.example.org",
            "ssh_user": "root",
            # Address the sensors dial for WireGuard; default: ssh_hostname.
            "sensormail_endpoint": "gateway.example.org",
            # Postfix's myhostname and the name in the gateway's certificate,
            # which the sensors verify; default: <host name>.sensormail.invalid.
            "sensormail_mail_name": "gateway.sensormail.invalid",
            # Where the gateway hands mail on, a Postfix next hop such as
            # "[smtp.example.org]:587"; default "" delivers by MX lookup.
            "sensormail_relay": "",
            **_fleet,
        },
    ),
]

sensors = [
    (
        "sensor-1",
        {
            "ssh_hostname": "192.0.2.11",
            "ssh_user": "root",
            # The one address this sensor may send as (required); the gateway
            # rejects any other and rebuilds From from it.
            "sensormail_sender": "sensor-1@sensors.example.org",
            # How the sensor authenticates: "cert" (a client certificate from
            # the fleet CA); "psk" is planned for sensors too small for TLS keys.
            "sensormail_mode": "cert",
        },
    ),
    (
        "sensor-2",
        {
            "ssh_hostname": "192.0.2.12",
            "ssh_user": "root",
            "sensormail_sender": "sensor-2@sensors.example.org",
        },
    ),
]
