"""Guessing passwords at a real `flux2-studio` with `--auth-file`: wrong tries are slowed per address and per
user, each failure logged with the caller's address and never the password."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.support.browser import StudioProcess, studio

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def login_process(encoder_server, tiny_snapshot, tmp_path_factory) -> Iterator[StudioProcess]:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("login")
    credentials = folder / "auth"
    credentials.write_text(f"ana:{PASSWORD}\nbo:another password\n")
    credentials.chmod(0o600)
    with studio(encoder_server.target, tiny_snapshot, folder / "images", "--auth-file", str(credentials)) as running:
        yield running


def login(url: str, password: str, user: str = "ana", address: str | None = None) -> requests.Response:
    """A login post; `address` poses as a client behind a proxy on this machine (uvicorn trusts its header)."""
    headers = {"X-Forwarded-For": address} if address else {}
    return requests.post(f"{url}/login", data={"username": user, "password": password}, headers=headers, timeout=30)


def test_rapid_wrong_passwords_are_refused_and_logged_and_the_right_one_works_after_the_wait(login_process):
    url = login_process.url
    started = time.monotonic()
    answers = [login(url, f"guess-{number}") for number in range(20)]
    assert [answer.status_code for answer in answers] == [400] * 3 + [429] * 17
    assert time.monotonic() - started < 10  # refused at once, not held open
    assert answers[3].headers["retry-after"] == "1"
    assert answers[3].json() == {"detail": "too many failed logins; try again in 1 s"}
    failed = login_process.lines("login failed for user ana from 127.0.0.1")
    assert [line.strip().rsplit("(", 1)[1] for line in failed] == [
        "1 in a row; no wait yet)", "2 in a row; no wait yet)", "3 in a row; next try in 1 s)"
    ]  # fmt: skip
    assert len(login_process.lines("login refused for user ana from 127.0.0.1: too many failures")) == 1
    assert "guess-" not in login_process.output()
    assert login(url, PASSWORD).status_code == 429  # even the right password waits its turn
    time.sleep(1.1)
    right = login(url, PASSWORD)
    assert right.status_code == 200
    assert requests.get(f"{url}/config", cookies=right.cookies, timeout=30).status_code == 200


def test_a_user_under_attack_waits_from_every_address_while_other_users_do_not(login_process):
    url = login_process.url
    for number in range(4):
        login(url, f"guess-{number}", address="10.0.0.1")
    assert login(url, PASSWORD, address="10.0.0.2").status_code == 429  # ana, from elsewhere: her name waits too
    assert login(url, "another password", user="bo", address="10.0.0.3").status_code == 200
    assert login_process.lines("login failed for user ana from 10.0.0.1")
    time.sleep(2.1)  # the wait after four failures in a row
    assert login(url, PASSWORD, address="10.0.0.2").status_code == 200
