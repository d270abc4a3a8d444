"""The page's whole HTTP surface, served in this process (so its routes and sessions can be listed): without a
login every route but the login page's refuses, and sessions nobody uses are forgotten."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.support.cli_runs import wait_until

# What answers without a login, as (method, route): the login page, the scripts, styles and icon it loads, and
# the login itself. Everything else must answer 401 with Gradio's own body.
PUBLIC = {
    ("GET", "/"), ("HEAD", "/"), ("POST", "/login"), ("POST", "/login/"), ("GET", "/logout"),
    ("GET", "/theme.css"), ("GET", "/favicon.ico"), ("GET", "/assets/{path:path}"), ("GET", "/static/{path:path}"),
}  # fmt: skip
NOT_AUTHENTICATED = {"detail": {"error": "Not authenticated", "auth_message": None}}
PASSWORD = "a long enough password"


@dataclass
class ServedPage:
    url: str
    blocks: Any  # gradio.Blocks, launched


@pytest.fixture(scope="module")
def serve_page(encoder_server, tiny_snapshot, tmp_path_factory) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """`serve_page(**launch options)`: the real page on the tiny pipeline, launched here as flux2-studio launches it."""
    folder = tmp_path_factory.mktemp("routes")
    saved = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "gradio-uploads")
    from diffusion_client.studio.cli import gradio_upload_folder, launch, prepare_environment

    prepare_environment()  # before Gradio is imported
    from diffusion_client import RemoteTextEncoder
    from diffusion_client.generation.generator import ImageGenerator
    from diffusion_client.generation.pipeline import PipelineConfig, load_pipeline, model_kind
    from diffusion_client.studio.engine import Studio
    from diffusion_client.studio.page import build_page
    from diffusion_client.studio.shelf import Shelf

    pipeline = load_pipeline(PipelineConfig(model_path=tiny_snapshot, device="cpu", quantize="none"))
    with RemoteTextEncoder(encoder_server.target) as encoder:
        generator = ImageGenerator(pipeline, encoder, model_name="tiny", progress=False)
        opened: list[tuple[Any, Any, Any]] = []

        def serve(**options: Any) -> ServedPage:
            studio = Studio(generator, folder / "images")
            shelf = Shelf(gradio_upload_folder(), per_visitor=2**26, total=2**27)
            page = build_page(studio, shelf, model_kind(tiny_snapshot), title="routes", lora_dir=None)
            images = folder / "images"
            port = launch(page, shelf, host="127.0.0.1", port=0, out_dir=images, log=lambda _: None, **options)
            opened.append((page, studio, shelf))
            return ServedPage(f"http://127.0.0.1:{port}", page)

        try:
            yield serve
        finally:
            for page, studio, shelf in opened:
                page.close()
                studio.close()
                shelf.close()
            if saved is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = saved


@pytest.fixture(scope="module")
def login_page(serve_page) -> ServedPage:  # type: ignore[no-untyped-def]
    return serve_page(credentials=[("ana", PASSWORD)])


def every_route(routes: list[Any], prefix: str = "") -> list[tuple[str, str]]:
    """(method, path template) of every route, those of included routers too."""
    found = []
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router
        if included is not None:
            found += every_route(included.routes, prefix + route.include_context.prefix)
            continue
        methods = getattr(route, "methods", None) or {"GET"}
        found += [(method, prefix + route.path) for method in sorted(methods)]
    return found


def filled(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "dummy", path)


def test_every_route_but_the_login_pages_refuses_without_a_login(login_page):
    routes = every_route(login_page.blocks.server_app.routes)
    assert len(routes) > 40 and not [path for _, path in routes if "run-history" in path]
    answered = set()
    for method, path in routes:
        # A reverse proxy on this machine sends Host: 127.0.0.1; nothing may take that for a login.
        reply = requests.request(
            method, login_page.url + filled(path), headers={"Host": "127.0.0.1"}, timeout=30, allow_redirects=False
        )
        if reply.status_code == 401:
            assert method == "HEAD" or reply.json() == NOT_AUTHENTICATED, (method, path)
        else:
            answered.add((method, path))
    assert answered == PUBLIC
    for method, path in [("GET", "/gradio_api/run-history/records"), ("POST", "/gradio_api/run-history/connect"),
                         ("GET", "/no/such/route")]:  # fmt: skip
        assert requests.request(method, login_page.url + path, timeout=30).status_code == 401


def test_run_history_is_off_even_after_a_login(login_page):
    session = requests.Session()
    assert session.post(f"{login_page.url}/login", data={"username": "ana", "password": PASSWORD}, timeout=30).ok
    assert session.get(f"{login_page.url}/config", timeout=30).status_code == 200
    for path in ("/gradio_api/run-history/buckets", "/gradio_api/run-history/records", "/gradio_api/runs"):
        assert session.get(login_page.url + path, timeout=30).status_code == 404


def test_sessions_nobody_uses_are_forgotten(serve_page):
    served = serve_page(session_idle_s=2)
    sessions = served.blocks.server_app.state_holder.session_data
    before = len(sessions)
    for _ in range(20):  # a script calling the API, a new session each time
        event = requests.post(
            f"{served.url}/gradio_api/call/reuse_settings", json={"data": [], "session_hash": secrets.token_hex(6)}
        ).json()["event_id"]
        assert "Nothing to reuse yet" in requests.get(f"{served.url}/gradio_api/call/reuse_settings/{event}").text
    assert len(sessions) >= before + 20
    started = time.monotonic()
    wait_until(lambda: len(sessions) == 0, 30)
    assert time.monotonic() - started < 10
