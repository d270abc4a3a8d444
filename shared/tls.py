"""TLS checks both sides make before gRPC would fail obscurely (a bind error, handshakes failing until the deadline)."""

from __future__ import annotations

import ssl
from pathlib import Path


def key_pair_mismatch(certificate_chain: Path, private_key: Path) -> str | None:
    """Why `private_key` is not the (unencrypted) key of `certificate_chain`, in OpenSSL's words; None if it is."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(certificate_chain, private_key, password=b"")
    except ssl.SSLError as error:
        return str(error.reason)
    return None
