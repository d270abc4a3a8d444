"""Named tokens: the file format, and who gets in."""

from __future__ import annotations

import pytest

from diffusion_client.errors import EncoderRejectedError
from diffusion_client.remote_encoder import RemoteTextEncoder
from encoder_server.config import ConfigError
from encoder_server.tokens import TokenRegistry, parse_tokens
from tests.helpers import start_server

ALICE = "alice-0123456789abcdef"
BOB = "bob-0123456789abcdef0"


def test_tokens_file_maps_each_name_to_its_token():
    text = f"# team tokens\nalice {ALICE}\n\nbob   {BOB}\n"
    assert parse_tokens(text, "tokens") == {"alice": ALICE.encode(), "bob": BOB.encode()}


def test_single_bare_token_file_still_works_as_the_default_caller():
    assert parse_tokens("team-secret-42\n", "tokens") == {"default": b"team-secret-42"}


@pytest.mark.parametrize(
    "text,message",
    [
        (f"alice {ALICE} extra\n", "line 1: expected `name token`, found 3 fields"),
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
    tokens = TokenRegistry({"alice": ALICE.encode(), "bob": BOB.encode()})
    assert tokens.identify(f"bearer {BOB}") == "bob"
    assert tokens.identify(f"Bearer {ALICE}x") is None
    assert tokens.identify(ALICE) is None
    assert tokens.identify(None) is None


def test_named_token_gets_embeddings_and_an_unknown_one_is_unauthenticated(tiny_snapshot, tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"alice {ALICE}\nbob {BOB}\n")
    with start_server(tiny_snapshot, tokens_file=tokens_file) as server:
        with RemoteTextEncoder(server.target, token=BOB) as encoder:
            assert encoder.encode("a cat").shape == (1, 512, 96)
        with RemoteTextEncoder(server.target, token="mallory-0123456789abc") as encoder:
            with pytest.raises(EncoderRejectedError) as refused:
                encoder.encode("a cat")
        assert refused.value.code.name == "UNAUTHENTICATED"
