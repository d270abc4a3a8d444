"""`flux2-verify`: one line per file naming each mark, `--json`, and exit 0 / 1 (a file unmarked) / 2 (unreadable)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from diffusion_client.provenance.authority import ROOT_CERT
from diffusion_client.provenance.iptc import xmp_packet
from tests.support.c2pa_files import flip_one_pixel_byte, marked_file, resave_with_pil, scene_file


def verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "diffusion_client.provenance.verify_cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_marked_file_reports_all_three_marks_and_exits_0(tmp_path):
    out = marked_file(tmp_path / "image.png")
    finished = verify(out)
    assert finished.returncode == 0, finished.stderr
    (line,) = finished.stdout.splitlines()
    assert line.startswith(f"{out}: marked: flux2-split watermark found (64 of 64 bits); ")
    assert "C2PA valid but untrusted signer (flux2-split " in line
    assert "IPTC source type trainedAlgorithmicMedia; EXIF Software 'AI generated;flux2'" in line


def test_resaved_copy_loses_the_manifest_but_keeps_the_watermark(tmp_path):
    copy = resave_with_pil(marked_file(tmp_path / "image.png"), tmp_path / "copy.jpg")
    finished = verify(copy)
    assert finished.returncode == 0, finished.stderr
    assert "flux2-split watermark found" in finished.stdout and "C2PA absent" in finished.stdout
    assert "no IPTC source type" in finished.stdout


def test_changed_pixel_is_reported_as_an_invalid_manifest(tmp_path):
    out = marked_file(tmp_path / "image.png")
    flip_one_pixel_byte(out)
    finished = verify(out)
    assert "C2PA invalid: hash mismatch" in finished.stdout
    assert "watermark not checked (the pixels cannot be decoded" in finished.stdout  # the flip broke the zlib stream
    assert finished.returncode == 0  # the metadata still says what it is


def test_trust_anchor_makes_the_signer_trusted(tmp_path):
    out = marked_file(tmp_path / "image.webp")
    finished = verify(out, "--trust-anchors", tmp_path / "authority" / ROOT_CERT)
    assert "C2PA valid, trusted signer" in finished.stdout


def test_unmarked_file_exits_1_and_says_so(tmp_path):
    plain = scene_file(tmp_path / "plain.png", size=512)
    finished = verify(plain)
    assert finished.returncode == 1
    assert finished.stdout.startswith(f"{plain}: NO MARK: flux2-split watermark not found (")


def test_unreadable_files_exit_2_with_one_line_each_and_the_others_are_still_checked(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    marked = marked_file(tmp_path / "image.png")
    finished = verify(tmp_path / "missing.png", text, marked)
    assert finished.returncode == 2
    errors = finished.stderr.splitlines()
    assert errors == [
        f"flux2-verify: error: {tmp_path / 'missing.png'}: no such file",
        f"flux2-verify: error: {text}: not an image file PIL can read",
    ]
    assert finished.stdout.startswith(f"{marked}: marked")


def test_json_reports_every_mark_per_file(tmp_path):
    marked = marked_file(tmp_path / "image.jpg")
    finished = verify("--json", marked, tmp_path / "missing.png")
    (report, missing) = json.loads(finished.stdout)
    assert report["marked"] is True
    assert report["watermark"] == {"found": True, "matched": 64, "bits": 64, "scale": 1.0}
    assert report["c2pa"]["state"] == "valid" and report["c2pa"]["failures"] == ["signingCredential.untrusted"]
    assert report["iptc_digital_source_type"].endswith("/trainedAlgorithmicMedia")
    assert missing == {"path": str(tmp_path / "missing.png"), "error": f"{tmp_path / 'missing.png'}: no such file"}


def _png_claiming(width: int, height: int, extra: bytes = b"") -> bytes:
    """A PNG whose header claims `width`x`height` but whose data is a few bytes: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_image_claiming_20000_squared_pixels_is_not_decoded_and_its_metadata_still_read(tmp_path):
    xmp = xmp_packet(creator_tool="flux2-split", model="m", parameters=None)
    itxt = b"XML:com.adobe.xmp\0\0\0\0\0" + xmp
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(
        _png_claiming(
            20000, 20000, struct.pack(">I", len(itxt)) + b"iTXt" + itxt + struct.pack(">I", zlib.crc32(b"iTXt" + itxt))
        )
    )
    finished = verify(bomb)
    assert finished.returncode == 0, finished.stderr  # the IPTC mark counts
    assert (
        "watermark not checked (" in finished.stdout and "IPTC source type trainedAlgorithmicMedia" in finished.stdout
    )


def test_bare_bomb_without_marks_exits_1_quickly(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(20000, 20000))
    finished = verify(bomb)
    assert finished.returncode == 1 and "watermark not checked" in finished.stdout


def _signed_with(tmp_path: Path, actions: list[dict], generator: str = "camera-app") -> Path:
    """A PNG whose manifest (signed by a local authority) states `actions` and `generator`."""
    import io

    import c2pa

    from diffusion_client.provenance.authority import local_authority
    from diffusion_client.provenance.manifest import OFFLINE_SETTINGS

    credentials = local_authority(tmp_path / "other-authority")
    signer = c2pa.Signer.from_info(
        c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credentials.chain_pem, credentials.key_pem, None)
    )
    plain = scene_file(tmp_path / "plain.png", size=64)
    definition = {
        "claim_generator_info": [{"name": generator, "version": "1"}],
        "title": "photo",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": actions}}],
    }
    signed = io.BytesIO()
    with c2pa.Builder(definition, c2pa.Context.from_dict(OFFLINE_SETTINGS)) as builder:
        builder.sign(signer, "image/png", io.BytesIO(plain.read_bytes()), signed)
    out = tmp_path / "signed.png"
    out.write_bytes(signed.getvalue())
    return out


def test_a_valid_manifest_from_a_camera_is_not_an_ai_mark(tmp_path):
    capture = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"
    photo = _signed_with(tmp_path, [{"action": "c2pa.created", "digitalSourceType": capture}])
    finished = verify(photo)
    assert finished.returncode == 1, finished.stdout
    assert "NO MARK" in finished.stdout and "source digitalCapture: not an AI mark" in finished.stdout


def test_names_from_a_hostile_manifest_cannot_forge_a_second_line(tmp_path):
    trained = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    forged = _signed_with(
        tmp_path, [{"action": "c2pa.created", "digitalSourceType": trained}], generator="Leica\nphoto.png: marked: x"
    )
    finished = verify(forged)
    assert len(finished.stdout.splitlines()) == 1 and "\x1b" not in finished.stdout


def test_trust_anchors_that_are_not_certificates_are_one_line_exit_2(tmp_path):
    anchors = tmp_path / "anchors.pem"
    anchors.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    finished = verify("--trust-anchors", anchors, marked_file(tmp_path / "image.png"))
    assert finished.returncode == 2 and finished.stdout == ""
    (line,) = finished.stderr.splitlines()
    assert line.startswith(f"flux2-verify: error: --trust-anchors {anchors}: ")


def test_thin_image_is_checked_without_a_crash(tmp_path):
    from PIL import Image

    thin = tmp_path / "thin.png"
    Image.new("RGB", (65_536, 2), (10, 20, 30)).save(thin)
    finished = verify(thin)
    assert finished.returncode == 1, finished.stderr
    assert "watermark not checked" in finished.stdout
