"""Where the metrics endpoint listens: HOST:PORT as the user wrote it, checked
before anything is loaded, and the error for an address that cannot serve."""
from __future__ import annotations

import ipaddress


class MetricsError(Exception):
    """The endpoint cannot listen where asked (one 'Error:' line at the CLI)."""


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) from `127.0.0.1:9464`, `[::1]:9464`, `localhost:9464`.
    The host is never implied: ':9464' would listen on every interface, which
    is for the user to write (`0.0.0.0:9464`), not for us to guess."""
    text = (text or "").strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise MetricsError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464 "
                           "(0.0.0.0:9464 for every interface)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise MetricsError(f"{text!r}: an IPv6 address goes in brackets, "
                               "e.g. [::1]:9464")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise MetricsError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise MetricsError(f"{text!r}: an IPv6 address goes in brackets, "
                           "e.g. [::1]:9464")
    elif not host.replace("-", "").replace(".", "").isalnum() or len(host) > 253:
        raise MetricsError(f"{text!r}: {host!r} is not a host name or address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise MetricsError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)
