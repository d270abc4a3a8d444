"""`flux2-serve` under attack: each hostile request gets a bounded, clear error in OpenAI's shape, and the server
keeps serving the next caller."""

from __future__ import annotations

import io
import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.helpers import sample_value
from tests.support.serve_runs import ServeProcess, http, post_and_never_read, start_serve


@pytest.fixture(scope="module")
def serve(tiny_snapshot: Path, encoder_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("serve-attacks")
    process = start_serve(
        tiny_snapshot,
        encoder_server.target,
        "--out-dir",
        str(folder / "images"),
        "--max-image-mib",
        "2",
        "--body-timeout",
        "3",
    )
    try:
        yield process.wait_serving()
    finally:
        process.stop()


def still_serving(serve: ServeProcess) -> None:
    body = {"prompt": "a red fox", "size": "64x64", "seed": 1, "num_inference_steps": 1}
    status, _, raw = http(serve.port, "/v1/images/generations", body)
    assert status == 200, raw


def error_of(raw: bytes) -> dict:  # type: ignore[type-arg]
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def multipart(fields: list[tuple[str, str | bytes, str | None]], boundary: str = "b0undary") -> tuple[bytes, dict]:  # type: ignore[type-arg]
    parts = []
    for name, value, filename in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
        if filename is not None:
            head += f'; filename="{filename}"\r\nContent-Type: image/png'
        data = value if isinstance(value, bytes) else value.encode()
        parts.append(head.encode() + b"\r\n\r\n" + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width`x`height` pixels (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def test_a_100_mb_json_body_is_refused_by_its_length_before_it_is_read(serve):
    with socket.create_connection(("127.0.0.1", serve.port)) as connection:
        connection.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100000000\r\n\r\n{"prompt": "'
        )
        reply = connection.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    still_serving(serve)


def test_a_chunked_body_past_the_limit_is_cut_off_with_413(serve):
    with socket.create_connection(("127.0.0.1", serve.port)) as connection:
        connection.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * 65536
        try:
            for _ in range(40):  # 2.5 MiB against a 1 MiB JSON limit
                connection.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        except OSError:
            pass  # the server answered and closed: what we want
        connection.settimeout(10)
        reply = connection.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    still_serving(serve)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "n": 1e9}, "n"),
        ({"prompt": "x", "n": 10**30}, "n"),
        ({"prompt": "x", "size": "99999x99999"}, "size"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x" * 40_000}, "prompt"),
        ({"prompt": "x", "loras": [{"name": "../../etc/passwd"}]}, "loras"),
        ({"prompt": "x", "guidance_scale": "NaN"}, "guidance_scale"),
    ],
)
def test_hostile_numbers_and_names_are_400s_naming_the_field(serve, body, param):
    status, _, raw = http(serve.port, "/v1/images/generations", body)
    assert status == 400 and error_of(raw)["param"] == param


def test_a_number_too_large_for_a_float_is_a_400(serve):
    status, _, raw = http(serve.port, "/v1/images/generations", b'{"prompt": "x", "guidance_scale": 1e999}')
    assert status == 400 and error_of(raw)["param"] == "guidance_scale"


def test_a_duplicated_json_field_is_refused(serve):
    raw_body = b'{"prompt": "a cat", "prompt": "a dog", "size": "64x64"}'
    status, _, raw = http(serve.port, "/v1/images/generations", raw_body)
    assert status == 400 and "prompt" in error_of(raw)["message"]


def test_json_that_is_not_an_object_is_a_400(serve):
    for raw_body in (b"[1, 2]", b"\xff\xfe", b'{"prompt": NaN}', b"1" * 5000):
        status, _, raw = http(serve.port, "/v1/images/generations", raw_body)
        assert status == 400, raw_body[:20]
        error_of(raw)


def test_a_thousand_image_parts_are_refused(serve):
    image = io.BytesIO()
    Image.new("RGB", (16, 16)).save(image, format="PNG")
    fields: list[tuple[str, str | bytes, str | None]] = [("prompt", "x", None)]
    fields += [("image[]", image.getvalue(), f"{index}.png") for index in range(1000)]
    body, headers = multipart(fields)
    status, _, raw = http(serve.port, "/v1/images/edits", body, headers)
    assert status in (400, 413) and "image" in error_of(raw)["message"]
    still_serving(serve)


def test_a_multipart_bomb_of_fields_is_refused(serve):
    fields: list[tuple[str, str | bytes, str | None]] = [(f"f{index}", "x", None) for index in range(5000)]
    body, headers = multipart(fields)
    status, _, raw = http(serve.port, "/v1/images/edits", body, headers)
    assert status in (400, 413)
    error_of(raw)
    still_serving(serve)


def test_an_image_claiming_20000_squared_pixels_is_a_400(serve):
    body, headers = multipart(
        [("prompt", "x", None), ("size", "64x64", None), ("image", png_claiming(20000, 20000), "bomb.png")]
    )
    status, _, raw = http(serve.port, "/v1/images/edits", body, headers)
    message = error_of(raw)["message"]
    assert status == 400 and "image 0 is 400,000,000 pixels" in message and "/tmp" not in message
    still_serving(serve)


def test_an_upload_over_max_image_mib_is_a_413(serve):
    body, headers = multipart([("prompt", "x", None), ("image", b"\x89PNG" + b"\0" * (3 << 20), "big.png")])
    status, _, raw = http(serve.port, "/v1/images/edits", body, headers)
    assert status == 413
    error_of(raw)


def test_an_unknown_url_and_a_wrong_method_answer_in_openai_shape(serve):
    status, _, raw = http(serve.port, "/v1/chat/completions", {"model": "x"})
    assert status == 404 and error_of(raw)["code"] == "unknown_url"
    status, _, raw = http(serve.port, "/v1/images/generations", method="GET")
    assert status == 405
    error_of(raw)


def test_slow_clients_do_not_starve_the_server(serve):
    """Slowloris: many connections trickling their headers; they are cut off at the header deadline and others
    are served meanwhile."""
    sockets = []
    for _ in range(50):
        connection = socket.create_connection(("127.0.0.1", serve.port))
        connection.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n")
        sockets.append(connection)
    try:
        started = time.monotonic()
        still_serving(serve)
        assert time.monotonic() - started < 60
        slow = sockets[0]
        slow.settimeout(30)
        assert slow.recv(4096).startswith(b"HTTP/1.1 408")  # at the header deadline, then closed
    finally:
        for connection in sockets:
            connection.close()


def test_a_body_that_never_finishes_is_cut_off(serve):
    with socket.create_connection(("127.0.0.1", serve.port)) as connection:
        connection.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"prompt"'
        )
        connection.settimeout(30)
        reply = connection.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408") or reply == b""


def images_made(serve: ServeProcess) -> float:
    return sample_value(http(serve.port, "/metrics")[2].decode(), "flux2_serve_images_total") or 0


def test_callers_that_never_read_their_replies_do_not_hold_up_the_next_caller(serve):
    """Four 512² images as JSON, and a stream of previews, to sockets that never read: their bytes wait in those
    connections (at most until the write deadline) and the next caller is answered meanwhile."""
    requests = [
        {"prompt": "a red fox", "size": "512x512", "n": 4, "seed": 1, "num_inference_steps": 1},
        {
            "prompt": "a red fox",
            "size": "512x512",
            "seed": 2,
            "num_inference_steps": 3,
            "stream": True,
            "partial_images": 3,
        },
    ]
    before = images_made(serve)
    sockets = []
    try:
        for body in requests:
            sockets.append(post_and_never_read(serve.port, body, receive_buffer=4096))
        deadline = time.monotonic() + 120
        while images_made(serve) < before + 5:  # all five made, their replies written to nobody
            assert time.monotonic() < deadline, "the unread requests never finished"
            time.sleep(0.1)
        still_serving(serve)
    finally:
        for connection in sockets:
            connection.close()
    still_serving(serve)
