"""Named tokens: the file format, and who gets in."""

from __future__ import annotations

import os
import threading

import pytest

from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.errors import EncoderRejectedError
from encoder_server.config import ConfigError
from shared.tokens import MAX_TOKENS_FILE_BYTES, TokenEntry, TokenRegistry, parse_tokens, read_tokens_file
from tests.support.helpers import TINY_EMBED_DIM, start_server

ALICE = "alice-0123456789abcdef"
BOB = "bob-0123456789abcdef0"


def test_tokens_file_maps_each_name_to_its_token():
    text = f"# team tokens\nalice {ALICE}\n\nbob   {BOB}\n"
    assert parse_tokens(text, "tokens") == {"alice": TokenEntry(ALICE.encode()), "bob": TokenEntry(BOB.encode())}


def test_single_bare_token_file_still_works_as_the_default_caller():
    assert parse_tokens("team-secret-42\n", "tokens") == {"default": TokenEntry(b"team-secret-42")}


@pytest.mark.parametrize(
    "text,message",
    [
        (f"alice {ALICE} extra\n", "line 1: expected `name token` then optional max_in_flight=N prompts_per_s=N"),
        (f"alice\nbob {BOB}\n", "line 1: expected `name token`, found 1 field"),
        (f"alice {ALICE}\nalice {BOB}\n", "line 2: the name 'alice' appears twice"),
        (f"alice {ALICE}\nbob {ALICE}\n", "line 2: this token is already given to another name"),
        (f"alice {ALICE}\nbob short\n", "line 2: tokens must be at least 16 characters"),
        (f"al/ice {ALICE}\nbob {BOB}\n", "line 1: the name must be"),
        ("# only a comment\n", "holds no tokens"),
    ],
)
def test_malformed_tokens_file_is_refused_naming_the_line(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_tokens(text, "tokens")


def test_identify_names_the_caller_and_ignores_the_scheme_case():
    tokens = TokenRegistry({"alice": TokenEntry(ALICE.encode()), "bob": TokenEntry(BOB.encode())})
    assert tokens.identify(f"bearer {BOB}") == "bob"
    assert tokens.identify(f"Bearer {ALICE}x") is None
    assert tokens.identify(ALICE) is None
    assert tokens.identify(None) is None


def test_named_token_gets_embeddings_and_an_unknown_one_is_unauthenticated(tiny_snapshot, tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"alice {ALICE}\nbob {BOB}\n")
    with start_server(tiny_snapshot, tokens_file=tokens_file) as server:
        with RemoteTextEncoder(server.target, token=BOB) as encoder:
            assert encoder.encode("a cat").shape == (1, 512, TINY_EMBED_DIM)
        with RemoteTextEncoder(server.target, token="mallory-0123456789abc") as encoder:
            with pytest.raises(EncoderRejectedError) as refused:
                encoder.encode("a cat")
        assert refused.value.code.name == "UNAUTHENTICATED"


def test_reserved_names_are_refused_naming_the_line():
    for name in ("unknown", "anonymous"):
        with pytest.raises(ConfigError, match=f"line 2: the name '{name}' is reserved"):
            parse_tokens(f"bob {BOB}\n{name} {ALICE}\n", "tokens")


def test_fifo_in_place_of_the_tokens_file_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "tokens"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_tokens_file(fifo)  # blocked forever before: open() waited for a writer


def test_tokens_file_over_the_size_bound_is_refused(tmp_path):
    path = tmp_path / "tokens"
    path.write_bytes(b"#" * (MAX_TOKENS_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="is over 4 MiB"):
        read_tokens_file(path)


def test_repeated_token_at_the_end_of_a_large_file_is_found_in_linear_time(tmp_path):
    """50,000 lines took minutes when each token was compared with every earlier one."""
    lines = [f"caller{index} token-{index:020d}" for index in range(50_000)]
    lines.append("last token-00000000000000000007")
    with pytest.raises(ConfigError, match="line 50001: this token is already given to another name"):
        parse_tokens("\n".join(lines), "tokens")


def test_a_large_tokens_table_identifies_callers_by_digest(tmp_path):
    entries = {f"caller{index}": TokenEntry(f"token-{index:020d}".encode()) for index in range(20_000)}
    tokens = TokenRegistry(entries)
    assert tokens.identify(f"Bearer token-{19_999:020d}") == "caller19999"
    assert tokens.identify(f"Bearer token-{20_000:020d}") is None


def test_sighup_reload_reads_the_file_off_the_event_loop(tiny_snapshot, tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"alice {ALICE}\n")
    with start_server(tiny_snapshot, tokens_file=tokens_file) as server:
        registry = server.handle.tokens
        read_on: list[str] = []
        reload = registry.reload

        def recording_reload() -> list[str]:
            read_on.append(threading.current_thread().name)
            return reload()

        registry.reload = recording_reload  # type: ignore[method-assign]
        tokens_file.write_text(f"alice {ALICE}\nbob {BOB}\n")
        server.run(server.handle.reload_tokens())
        with RemoteTextEncoder(server.target, token=BOB) as encoder:
            assert encoder.info().hidden_size > 0
    assert read_on and read_on[0] != "encoder-server"  # the loop's thread (tests.support.helpers' serve_in_thread)
