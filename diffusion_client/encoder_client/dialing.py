"""How `RemoteTextEncoder` dials: one server, a list of replicas or a `dns:///` name, in plain text or TLS.

"host:port"                      one server, dialled as gRPC always did (no balancing, no health checks)
"a:50051,b:50051" or ["a:..."]   replicas: names resolved once here into one `ipv4:`/`ipv6:` address list
"dns:///name:50051"              replicas behind one DNS name (a headless Service); gRPC re-resolves it

Replicas share one channel with gRPC's own `round_robin` balancing and client-side health checking: a replica
that reports NOT_SERVING on `grpc.health.v1` for the encoder service (loading, or draining on SIGTERM) or whose
connection fails gets no new calls. A listed name is resolved only once, when the client is made; use a
`dns:///` target for names whose addresses change.

`server_answered` tells a failure a server sent from gRPC's own for a call that found no connection, and
`unreached_error` says why no connection: nothing listening, something that is not gRPC, or TLS the server
refuses (gRPC reports all of these as UNAVAILABLE).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from diffusion_client.errors import EncoderUnavailableError, InputError, printable_line
from shared.defaults import SERVICE_NAME
from shared.tls import key_pair_mismatch

PemSource = str | os.PathLike[str] | bytes  # a PEM file's path, or its contents

# Round robin over every replica that is connected and reports SERVING for the encoder service.
BALANCED_SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": SERVICE_NAME}}
)

# How gRPC 1.85 words a call that found no connection to send on (measured on loopback: these prefixes, then the
# last address's error); any other status came from a server (or proxy) the call reached. So did a replica's failed
# health check: that server is up, answering NOT_SERVING while it loads. Wordings of other versions that these miss
# count as reached, which only means retrying until the deadline, as before.
_NO_CONNECTION = re.compile(
    r"^(failed to connect to all addresses|connections to all backends failing|errors resolving|dns resolution failed)",
    re.IGNORECASE,
)
_REFUSED = re.compile(r"connection refused", re.IGNORECASE)
_NOT_HTTP2 = re.compile(r"failed parsing http/2|http1\.x", re.IGNORECASE)  # an HTTP/1 server, or other bytes
_CLOSED = re.compile(r"socket closed|connection reset|broken pipe|end of file", re.IGNORECASE)
_UNRESOLVED = re.compile(r"errors resolving|dns resolution failed", re.IGNORECASE)
_UNHEALTHY = re.compile(r"backend unhealthy", re.IGNORECASE)

# gRPC resolver schemes a target may start with; the first three can name several servers.
BALANCED_SCHEMES = ("dns", "ipv4", "ipv6")
_SCHEME = re.compile(r"^(dns|ipv4|ipv6|unix|unix-abstract|vsock|xds):", re.IGNORECASE)


@dataclass(frozen=True)
class Dial:
    """What to hand gRPC: the target it resolves, and for a resolved list the name TLS certificates must hold."""

    target: str
    balanced: bool  # round robin with health checks, over several addresses
    server_name: str | None = None  # host name checked against each replica's certificate; None: from target
    authority: str | None = None  # the `:authority` of every call; None: from target


def dial(targets: str | Sequence[str]) -> Dial:
    """Turn the user's target text (or list of `host:port` entries) into what one gRPC channel dials."""
    entries = _entries(targets)
    if len(entries) == 1:
        scheme = _SCHEME.match(entries[0])
        return Dial(entries[0], balanced=scheme is not None and scheme.group(1).lower() in BALANCED_SCHEMES)
    parsed = [_host_port(entry) for entry in entries]
    addresses = list(dict.fromkeys((address, port) for host, port in parsed for address in _resolve(host, port)))
    first_host, first_port = parsed[0]
    authority = f"[{first_host}]:{first_port}" if ":" in first_host else f"{first_host}:{first_port}"
    return Dial(_address_list(addresses), balanced=True, server_name=first_host, authority=authority)


def channel_target_text(targets: str | Sequence[str]) -> str:
    """The user's target as one line for messages: a list joined by commas."""
    return targets if isinstance(targets, str) else ",".join(targets)


def open_channel(
    targets: str | Sequence[str], credentials: grpc.ChannelCredentials | None, options: dict[str, Any]
) -> grpc.Channel:
    """One channel to the server or its replicas; `options` given by the caller win over ours."""
    where = dial(targets)
    ours: dict[str, Any] = {}
    if where.balanced:
        ours["grpc.service_config"] = BALANCED_SERVICE_CONFIG
    if where.authority is not None:
        ours["grpc.default_authority"] = where.authority
    if where.server_name is not None and credentials is not None:
        ours["grpc.ssl_target_name_override"] = where.server_name
    merged = list({**ours, **options}.items())
    if credentials is None:
        return grpc.insecure_channel(where.target, options=merged)
    return grpc.secure_channel(where.target, credentials, options=merged)


def server_answered(code: grpc.StatusCode, details: str | None) -> bool:
    """Whether a failed call reached a server: any status but gRPC's own for finding no connection to send on."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return False  # a listener that never speaks, or a server too slow: no evidence either way
    text = details or ""
    return code != grpc.StatusCode.UNAVAILABLE or not _NO_CONNECTION.search(text) or bool(_UNHEALTHY.search(text))


Failure = tuple[grpc.StatusCode, str | None]  # a call's status code and details


def _kind(failure: Failure) -> str:
    code, details = failure
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "silent"
    for kind, pattern in (("not-grpc", _NOT_HTTP2), ("closed", _CLOSED), ("refused", _REFUSED)):
        if pattern.search(details or ""):
            return kind
    return "unresolved" if _UNRESOLVED.search(details or "") else "other"


# gRPC names only the last address tried: for `localhost` that may be ::1 refusing while 127.0.0.1 closes on
# plain text. What something listening did says more than a refusal, so of the failures seen, that one is reported.
# A deadline says least: a call may also wait out a reconnection.
_TELLING = ("unresolved", "silent", "refused", "other", "closed", "not-grpc")


def more_telling(seen: Failure | None, failure: Failure) -> Failure:
    """Of two failures to connect, the one that says more about what is at the target (the later one on a tie)."""
    if seen is not None and _TELLING.index(_kind(seen)) > _TELLING.index(_kind(failure)):
        return seen
    return failure


def unreached_error(target: str, failure: Failure, *, tls: bool, waited_s: float) -> EncoderUnavailableError:
    """Why no server at `target` has answered in `waited_s`, as one line saying what to check; always UNAVAILABLE.

    A refusal is checked against every address the target's names resolve to (one TCP connect each): gRPC reports
    only the last address it tried, which for `localhost` may be ::1 while a TLS server listens on 127.0.0.1.
    """
    said = printable_line(failure[1] or "no details")
    tls_hint = (
        "if the server requires client certificates, give --tls-cert and --tls-key"
        if tls
        else "if the server uses TLS, give --tls-ca (or --tls for a publicly signed certificate)"
    )
    port_hint = "give the encoder's gRPC port (`flux2-encoder serve --port`, 50051 by default)"
    kind = _kind(failure)
    if kind == "silent":
        why = (
            f"what listens there accepts connections but did not answer as a gRPC server within {waited_s:g} s; "
            f"{port_hint}, or raise --connect-timeout on a slow network"
        )
    elif kind == "refused" and (listening := _listening_address(target)):
        why = f"{listening} accepts connections but not this client's gRPC ({said}); {tls_hint}; else {port_hint}"
    elif kind == "refused":
        why = (
            "nothing is listening there (connection refused); check the address and that `flux2-encoder serve` "
            "is running, or raise --connect-timeout for a server still starting"
        )
    elif kind == "not-grpc":
        why = f"what listens there is not a gRPC server ({said}); {port_hint}, not its --http-port"
    elif kind == "closed":
        why = f"what listens there closed the connection before speaking gRPC ({said}); {tls_hint}; else {port_hint}"
    elif kind == "unresolved":
        why = f"the name does not resolve ({said}); check the address"
    else:
        why = f"{said}; check the address and that `flux2-encoder serve` is running; {tls_hint}"
    return EncoderUnavailableError(
        f"cannot reach the encoder at {target}: {why}", target=target, code=grpc.StatusCode.UNAVAILABLE
    )


def _listening_address(target: str) -> str | None:
    """The first address of `target`'s `host:port` entries that accepts a TCP connection, if any."""
    for entry in _entries(target):
        try:
            host, port = _host_port(entry)
        except ValueError:
            continue  # a scheme (dns:///, unix:) or no port: gRPC's own words must do
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            continue
        for family, kind, protocol, _, sockaddr in found:
            with socket.socket(family, kind, protocol) as probe:
                probe.settimeout(0.5)
                if probe.connect_ex(sockaddr) == 0:
                    address = str(sockaddr[0])
                    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return None


def tls_credentials(
    tls: bool, ca: PemSource | None, cert: PemSource | None, key: PemSource | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials when TLS is asked for (`tls`, or any file given), else None for plain text.

    Without `ca` the system's root certificates verify the server; `cert` and `key` (both or neither) are the
    client's own certificate for servers that require one (mTLS).
    """
    if (cert is None) != (key is None):
        given, missing = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
        raise ValueError(f"{given} needs {missing} too: a client certificate is sent with its private key")
    if not (tls or ca is not None or cert is not None):
        return None
    private_key = None if key is None else read_pem("TLS key", key)
    certificate_chain = None if cert is None else read_pem("TLS certificate", cert)
    if private_key is not None and certificate_chain is not None:
        _check_key_pair(certificate_chain, private_key)
    return grpc.ssl_channel_credentials(
        root_certificates=None if ca is None else read_pem("TLS CA", ca),
        private_key=private_key,
        certificate_chain=certificate_chain,
    )


def _check_key_pair(certificate_chain: bytes, private_key: bytes) -> None:
    """Refuse a key that is not the certificate's: gRPC would only fail each handshake until the deadline."""
    with tempfile.TemporaryDirectory(prefix="flux2-tls-") as private:  # ssl loads pairs from files only
        cert_file, key_file = Path(private, "cert.pem"), Path(private, "key.pem")
        cert_file.write_bytes(certificate_chain)
        key_file.touch(mode=0o600)
        key_file.write_bytes(private_key)
        if reason := key_pair_mismatch(cert_file, key_file):
            raise InputError(
                f"the TLS key is not the private key of the TLS certificate ({reason}); give the "
                "unencrypted key the client certificate was issued for"
            )


def read_pem(what: str, source: PemSource) -> bytes:
    """A PEM file's bytes (or `source` itself if it is bytes); `InputError` in one line if unreadable or not PEM."""
    if isinstance(source, bytes):
        data, name = source, f"the {what} given"
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise InputError(f"cannot read the {what} file {path}: {error.strerror or error}") from None
        name = f"the {what} file {path}"
    if b"-----BEGIN " not in data:
        raise InputError(f"{name} is not PEM (no -----BEGIN line)")
    return data


def _entries(targets: str | Sequence[str]) -> list[str]:
    raw = targets.split(",") if isinstance(targets, str) else list(targets)
    entries = [entry.strip() for entry in raw]
    if not entries or not all(entries):
        raise ValueError(f"empty encoder target in {channel_target_text(targets)!r}; give host:port entries")
    if len(entries) > 1:
        for entry in entries:
            if _SCHEME.match(entry) and not re.fullmatch(r"[^:]+:\d+", entry):
                raise ValueError(
                    f"list replicas as host:port entries, not {entry!r}; a dns:/// name goes alone as the target"
                )
    return entries


def _host_port(entry: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`; the port is required in a list."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", entry)
    port = int(match.group(2) or match.group(4)) if match else 0
    if match is None or not 0 < port < 65536:
        raise ValueError(f"encoder replica {entry!r} is not host:port (an IPv6 address as [addr]:port)")
    return match.group(1) or match.group(3), port


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """An IP literal as it is; a name through the system resolver, once."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        target = f"{host}:{port}"
        raise EncoderUnavailableError(
            f"cannot resolve the encoder replica {target}: {error.strerror or error}",
            target=target,
            code=grpc.StatusCode.UNAVAILABLE,
        ) from None
    addresses = [ipaddress.ip_address(str(sockaddr[0]).split("%")[0]) for *_, sockaddr in found]
    return list(dict.fromkeys(addresses))


def _address_list(addresses: Sequence[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]) -> str:
    """`ipv4:a:p,b:q`, or `ipv6:[a]:p,...` with IPv4 addresses mapped (`[::ffff:1.2.3.4]`) when families mix."""
    if all(isinstance(address, ipaddress.IPv4Address) for address, _ in addresses):
        return "ipv4:" + ",".join(f"{address}:{port}" for address, port in addresses)
    mapped = [
        (ipaddress.IPv6Address(f"::ffff:{address}") if isinstance(address, ipaddress.IPv4Address) else address, port)
        for address, port in addresses
    ]
    return "ipv6:" + ",".join(f"[{address}]:{port}" for address, port in mapped)
