"""The client over TLS and mTLS: the same embeddings as in plain text; any TLS mismatch is EncoderUnavailableError."""

from __future__ import annotations

import time

import pytest
import torch

from diffusion_client import RemoteTextEncoder
from diffusion_client.errors import EncoderUnavailableError, InputError
from diffusion_client.generation.cli import main as generate_main
from encoder_server.config import TlsConfig
from tests.support.certs import make_certificates
from tests.support.cli_runs import assert_one_line_error
from tests.support.helpers import TINY_EMBED_DIM, start_server

PROMPTS = ["a paper boat", "a glass bird"]
FAILS_WITHIN_S = 1.5  # how long a client expected to fail may try


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):  # type: ignore[no-untyped-def]
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def mtls_server(tiny_snapshot, certificates):  # type: ignore[no-untyped-def]
    """A server that requires a client certificate signed by the test CA; dial it as localhost (its cert's name)."""
    tls = TlsConfig(certificates.server_cert, certificates.server_key, client_ca=certificates.ca)
    with start_server(tiny_snapshot, tls=tls) as server:
        yield server


def localhost(server) -> str:  # type: ignore[no-untyped-def]
    return f"localhost:{server.handle.port}"


def test_mtls_client_gets_the_same_embeddings_as_a_plain_client(mtls_server, encoder_server, certificates):
    with RemoteTextEncoder(
        localhost(mtls_server),
        tls_ca=certificates.ca,
        tls_cert=certificates.client_cert,
        tls_key=certificates.client_key,
    ) as encoder:
        over_tls = encoder.encode(PROMPTS)
    with RemoteTextEncoder(encoder_server.target) as encoder:
        plain = encoder.encode(PROMPTS)
    assert torch.equal(over_tls, plain)


def test_client_trusting_another_ca_fails_at_once_naming_tls_ca(mtls_server, certificates):
    with RemoteTextEncoder(
        localhost(mtls_server),
        timeout=30,
        tls_ca=certificates.other_ca,
        tls_cert=certificates.client_cert,
        tls_key=certificates.client_key,
    ) as encoder:
        started = time.monotonic()
        with pytest.raises(EncoderUnavailableError) as error:
            encoder.encode("x")
    assert time.monotonic() - started < 5, "a certificate our CA did not sign is not retried until the deadline"
    assert "CERTIFICATE_VERIFY_FAILED" in str(error.value) and "--tls-ca" in str(error.value)


def test_server_certificate_for_another_name_fails_at_once(mtls_server, certificates):
    with RemoteTextEncoder(
        localhost(mtls_server),
        timeout=30,
        tls_ca=certificates.ca,
        tls_cert=certificates.client_cert,
        tls_key=certificates.client_key,
        channel_options=[("grpc.ssl_target_name_override", "encoder.example")],
    ) as encoder:
        started = time.monotonic()
        with pytest.raises(EncoderUnavailableError, match="must name the host dialled"):
            encoder.info()
    assert time.monotonic() - started < 5


def test_replicas_listed_by_name_are_verified_against_that_name(mtls_server, certificates):
    port = mtls_server.handle.port
    with RemoteTextEncoder(
        f"localhost:{port},localhost:{port}",  # resolved here to addresses; the certificate names localhost
        tls_ca=certificates.ca,
        tls_cert=certificates.client_cert,
        tls_key=certificates.client_key,
    ) as encoder:
        assert encoder.encode("x").shape == (1, 512, TINY_EMBED_DIM)


def test_tls_client_to_a_plaintext_server_fails_at_once(encoder_server, certificates):
    target = f"localhost:{encoder_server.handle.port}"
    with RemoteTextEncoder(target, timeout=30, tls_ca=certificates.ca) as encoder:
        started = time.monotonic()
        with pytest.raises(EncoderUnavailableError) as error:
            encoder.info()
    assert time.monotonic() - started < 5
    assert "uses TLS" in str(error.value)


def test_client_without_a_certificate_is_refused_by_an_mtls_server(mtls_server, certificates):
    with RemoteTextEncoder(localhost(mtls_server), timeout=FAILS_WITHIN_S, tls_ca=certificates.ca) as encoder:
        with pytest.raises(EncoderUnavailableError) as error:
            encoder.encode("x")
    assert "--tls-cert and --tls-key" in str(error.value)


def test_plaintext_client_to_a_tls_server_is_refused_with_a_tls_hint(mtls_server):
    with RemoteTextEncoder(localhost(mtls_server), timeout=FAILS_WITHIN_S) as encoder:
        with pytest.raises(EncoderUnavailableError) as error:
            encoder.encode("x")
    assert "if the server uses TLS, give --tls-ca" in str(error.value)


@pytest.mark.parametrize("given", ["tls_cert", "tls_key"])
def test_client_certificate_and_key_come_together(certificates, given):
    with pytest.raises(ValueError, match="a client certificate is sent with its private key"):
        RemoteTextEncoder("localhost:1", **{given: certificates.client_cert})


def test_client_key_that_is_not_the_certificates_is_refused_before_dialling(certificates):
    with pytest.raises(InputError, match="the TLS key is not the private key of the TLS certificate"):
        RemoteTextEncoder("localhost:1", tls_cert=certificates.client_cert, tls_key=certificates.server_key)


def test_unreadable_ca_file_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError) as error:
        RemoteTextEncoder("localhost:1", tls_ca=tmp_path / "missing.pem")
    assert str(error.value) == f"cannot read the TLS CA file {tmp_path / 'missing.pem'}: No such file or directory"


def test_ca_that_is_not_pem_is_an_input_error(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(InputError, match="is not PEM"):
        RemoteTextEncoder("localhost:1", tls_ca=tmp_path / "ca.pem")


def test_generate_with_a_certificate_but_no_key_exits_2_in_one_line(tiny_snapshot, certificates, capsys):
    code = generate_main(["a cat", "--model", str(tiny_snapshot), "--tls-cert", str(certificates.client_cert)])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "give --tls-cert and --tls-key together")


def test_generate_over_mtls_writes_the_image(mtls_server, certificates, tiny_snapshot, tmp_path):
    tls = ["--tls-ca", str(certificates.ca), "--tls-cert", str(certificates.client_cert)]
    tls += ["--tls-key", str(certificates.client_key)]
    out = tmp_path / "x.png"
    size = ["--height", "64", "--width", "64", "--steps", "2", "--quiet"]
    code = generate_main(
        ["a cat", "--encoder", localhost(mtls_server), "--model", str(tiny_snapshot), "--out", str(out), *size, *tls]
    )
    assert code == 0 and out.is_file()
