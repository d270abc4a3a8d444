"""Reaching a Ray head named by `--ray HOST:PORT`, in bounded time, or one line saying what answered instead.

`ray.init` retries a wrong port for minutes, saying nothing of its own, and cannot be interrupted while it waits in
Ray's C++ code. So `probe_head` asks first, within `--connect-timeout`: a TCP connection, the greeting an HTTP/2
client sends, then one call of Ray's own gRPC service with no arguments (what `ray.init` asks first):

| at the port | what the probe says |
| --- | --- |
| nothing | nothing listening there (connection refused) |
| a listener that never speaks | it accepts connections but said nothing within the timeout |
| an HTTP/1 server (a web server, Ray's dashboard) | it answered but is not a Ray head (it speaks HTTP) |
| another gRPC server (a flux2-encoder, say) | it speaks gRPC but is not a Ray head |
| Ray's GCS (`ray start --head`'s port), Ray Client's for `ray://` | Ray's own answer, even a refused token: go on |

`join` then runs `ray.init` on a thread of its own and waits for it on this one, so Ctrl-C and SIGTERM stop the
command at once, and gives up on a head that answered but that Ray cannot join within `JOIN_S`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from types import ModuleType
from typing import Any

from diffusion_client.errors import ClientError, InputError, printable_line

CLIENT_SCHEME = "ray://"  # Ray Client: a gRPC proxy on the head, 10001 by default
GCS_PROBE = "/ray.rpc.NodeInfoGcsService/GetClusterId"
CLIENT_PROBE = "/ray.rpc.RayletDriver/ClusterInfo"
# The HTTP/2 client preface and an empty SETTINGS frame: an HTTP/2 server answers with its own SETTINGS frame.
HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
SETTINGS_FRAME = 4
RAY_ANSWERS = ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED")
JOIN_S = 60.0  # for `ray.init`, once the head has answered as Ray


class HeadUnreachableError(ClientError):
    """Nothing that answers as a Ray head at `--ray`'s address, or a head that could not be joined; one line."""


def head_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT`, either after `ray://`) as a host and port; `InputError` for anything else."""
    host, _, port = address.removeprefix(CLIENT_SCHEME).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--ray {address}: give the head's HOST:PORT (as `ray start --head` prints it), or local")
    return host.strip("[]"), int(port)


def probe_head(address: str, timeout_s: float) -> None:
    """Return if a Ray head answers at `address` within `timeout_s` (give or take a second); else raise
    `HeadUnreachableError` saying what is there."""
    host, port = head_address(address)
    client = address.startswith(CLIENT_SCHEME)
    hint = (
        "`ray://` takes the head's Ray Client port (10001 by default)"
        if client
        else "give the port `ray start --head` printed (6379 by default), or local"
    )

    def unreachable(why: str) -> HeadUnreachableError:
        return HeadUnreachableError(f"cannot reach the Ray head at {address}: {why}; {hint}")

    deadline = time.monotonic() + timeout_s
    try:
        connection = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        raise unreachable("nothing is listening there (connection refused)") from None
    except TimeoutError:
        raise unreachable(f"no connection within {timeout_s:g} s (no such host, or a firewall)") from None
    except socket.gaierror as error:
        raise unreachable(f"the name does not resolve ({error.strerror or error})") from None
    except OSError as error:
        raise unreachable(f"cannot connect ({error.strerror or error})") from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true"):
            return  # a TLS cluster: the plain greeting below would be refused; Ray's own TLS settings decide
        try:
            connection.settimeout(max(deadline - time.monotonic(), 0.1))
            connection.sendall(HTTP2_GREETING)
            reply = connection.recv(64)
        except TimeoutError:
            raise unreachable(
                f"it accepts connections but said nothing within {timeout_s:g} s: not a Ray head"
            ) from None
        except OSError:
            reply = b""
    if not reply:
        raise unreachable("it closed the connection without answering: not a Ray head")
    if reply.startswith(b"HTTP/") or b"<html" in reply.lower() or b"<!doctype" in reply.lower():
        raise unreachable("it answered but is not a Ray head (it speaks HTTP/1: a web server, or Ray's dashboard)")
    if len(reply) < 9 or reply[3] != SETTINGS_FRAME:
        raise unreachable("it answered but is not a Ray head (it does not speak HTTP/2, as Ray's gRPC does)")
    _call_ray(host, port, CLIENT_PROBE if client else GCS_PROBE, max(deadline - time.monotonic(), 1.0), unreachable)


def _call_ray(host: str, port: int, method: str, timeout_s: float, unreachable: Any) -> None:
    """One call of Ray's `method` with an empty request; any answer of Ray's own means a Ray server is there."""
    import grpc

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
        try:
            call(b"", timeout=timeout_s)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code.name in RAY_ANSWERS:
                return
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise unreachable("it speaks gRPC but is not a Ray head (it does not serve Ray's own calls)") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise unreachable(
                    f"it speaks HTTP/2 but did not answer Ray's first call within {timeout_s:g} s"
                ) from None
            details = printable_line(error.details() if isinstance(error, grpc.Call) else str(error))
            raise unreachable(f"it is not a Ray head ({code.name}: {details})") from None


def join(ray: ModuleType, address: str, options: dict[str, Any], bound_s: float = JOIN_S) -> None:
    """`ray.init(address, **options)` on a thread of its own, waited for here, where signals still arrive: a
    `KeyboardInterrupt` leaves it behind at once (the process then exits past it). Raises what `ray.init` raises,
    or `HeadUnreachableError` after `bound_s`."""
    outcome: list[BaseException | None] = []
    finished = threading.Event()

    def connect() -> None:
        try:
            ray.init(address=address, **options)
            outcome.append(None)
        except BaseException as error:  # handed to the waiting thread, which raises it there
            outcome.append(error)
        finally:
            finished.set()

    threading.Thread(target=connect, name="ray-init", daemon=True).start()
    if not finished.wait(bound_s):  # interruptible: a signal's handler runs, and its exception propagates
        raise HeadUnreachableError(
            f"the Ray head at {address} answered, but joining its cluster did not finish within {bound_s:g} s; "
            "check that this machine reaches every node (--verbose shows Ray's own lines)"
        )
    if outcome[0] is not None:
        raise outcome[0]
