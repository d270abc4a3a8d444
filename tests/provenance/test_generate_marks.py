"""`flux2-generate` marks what it writes: formats by extension, every mark by default, flags that turn each off."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from diffusion_client.provenance.authority import SIGNER_CHAIN, SIGNER_KEY, local_authority
from diffusion_client.provenance.marking import authority_note
from diffusion_client.provenance.verify import check_file
from diffusion_client.provenance.watermark import embed_watermark, too_small_note
from tests.generation.test_generate import generate, pixels
from tests.support.c2pa_files import c2pa_store, scene_file
from tests.support.cli_runs import assert_one_line_error, dead_port, run_cli

MARKABLE = ["--height", "256", "--width", "256", "--steps", "2"]  # 256x256: the watermark's minimum
SMALL = ["--height", "64", "--width", "64", "--steps", "2"]


@pytest.mark.parametrize(
    "suffix, pil_format", [(".png", "PNG"), (".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")]
)
def test_output_format_follows_the_extension_and_carries_every_mark(
    encoder_server, tiny_snapshot, tmp_path, suffix, pil_format
):
    out = tmp_path / f"fox{suffix}"
    assert generate(encoder_server, tiny_snapshot, "a fox", "--out", str(out), *MARKABLE) == 0
    with Image.open(out) as image:
        assert image.format == pil_format
    marks = check_file(out)
    assert marks.watermark is not None and marks.watermark.found
    assert marks.manifest.state == "valid" and marks.manifest.claim_generator.startswith("flux2-split")
    assert marks.source_type is not None and marks.source_type.endswith("/trainedAlgorithmicMedia")
    assert marks.software == "AI generated;flux2"


def test_marked_image_is_the_unmarked_image_plus_the_watermark(encoder_server, tiny_snapshot, tmp_path):
    marked, plain = tmp_path / "marked.png", tmp_path / "plain.png"
    assert generate(encoder_server, tiny_snapshot, "a fox", "--out", str(marked), *MARKABLE) == 0
    no_marks = ["--no-watermark", "--no-c2pa", "--no-iptc"]
    assert generate(encoder_server, tiny_snapshot, "a fox", "--out", str(plain), *MARKABLE, *no_marks) == 0
    with Image.open(plain) as image:
        np.testing.assert_array_equal(pixels(marked), np.asarray(embed_watermark(image.convert("RGB"))))
    assert not check_file(plain).marked


def test_unknown_extension_is_refused_before_anything_loads(tiny_snapshot, tmp_path):
    out = tmp_path / "fox.gif"
    finished = run_cli(
        "a fox", "--encoder", f"127.0.0.1:{dead_port()}", "--model", str(tiny_snapshot), "--out", str(out)
    )
    assert finished.returncode == 2
    assert_one_line_error(finished.stderr, f"cannot write {out}: the extension must be one of .png, .jpg, .jpeg, .webp")


def test_key_not_matching_its_certificate_is_one_line_before_the_encoder_is_asked(tiny_snapshot, tmp_path):
    local_authority(tmp_path / "a")
    local_authority(tmp_path / "b")
    out = tmp_path / "x.png"
    finished = run_cli(
        "a fox", "--encoder", f"127.0.0.1:{dead_port()}", "--model", str(tiny_snapshot), "--out", str(out),
        "--c2pa-cert", str(tmp_path / "a" / SIGNER_CHAIN), "--c2pa-key", str(tmp_path / "b" / SIGNER_KEY),
    )  # fmt: skip
    assert finished.returncode == 2
    assert_one_line_error(finished.stderr, "the key does not match the certificate")
    assert not (tmp_path / "x.png").exists()


def test_small_image_gets_one_note_and_the_other_marks(encoder_server, tiny_snapshot, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\nan owl\n")
    finished = run_cli(
        "--prompts", str(prompts), "--encoder", encoder_server.target, "--model", str(tiny_snapshot), "--quiet",
        "--out", str(tmp_path / "small.png"), *SMALL,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    small = f"flux2-generate: note: {too_small_note(64, 64)}"
    assert finished.stderr.splitlines().count(small) == 1  # once for the run, not per image
    marks = check_file(tmp_path / "small-001.png")
    assert marks.watermark is None and marks.manifest.state == "valid" and marks.marked


def test_only_the_run_that_makes_the_local_authority_says_so_at_its_end(encoder_server, tiny_snapshot, tmp_path):
    config = {"XDG_CONFIG_HOME": str(tmp_path / "config")}  # no authority yet
    folder = tmp_path / "config" / "flux2-split" / "c2pa"
    command = ["a fox", "--encoder", encoder_server.target, "--model", str(tiny_snapshot), "--quiet", "--no-watermark"]
    first = run_cli(*command, *SMALL, "--out", str(tmp_path / "first.png"), env=config)
    second = run_cli(*command, *SMALL, "--out", str(tmp_path / "second.png"), env=config)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert first.stderr.splitlines() == [f"flux2-generate: note: {authority_note(folder)}"]
    assert second.stderr == ""  # it found the authority the first run made
    assert "untrusted" in authority_note(folder) and str(folder / "root.pem") in authority_note(folder)


def test_local_authority_key_others_can_read_is_one_line_saying_chmod_600(tiny_snapshot, tmp_path):
    folder = tmp_path / "config" / "flux2-split" / "c2pa"
    local_authority(folder)
    key = folder / SIGNER_KEY
    key.chmod(0o644)
    finished = run_cli(
        "a fox", "--encoder", f"127.0.0.1:{dead_port()}", "--model", str(tiny_snapshot),
        "--out", str(tmp_path / "x.png"), env={"XDG_CONFIG_HOME": str(tmp_path / "config")},
    )  # fmt: skip
    assert finished.returncode == 2
    assert_one_line_error(finished.stderr, f"{key} is open to other users", f"chmod 600 {key}")


def test_own_certificate_signs_without_the_local_authority_note(encoder_server, tiny_snapshot, tmp_path):
    team = local_authority(tmp_path / "team")  # stands in for a team's own certificate authority
    out = tmp_path / "x.png"
    finished = run_cli(
        "a fox", "--encoder", encoder_server.target, "--model", str(tiny_snapshot), "--quiet", "--out", str(out),
        "--c2pa-cert", str(tmp_path / "team" / SIGNER_CHAIN), "--c2pa-key", str(tmp_path / "team" / SIGNER_KEY),
        *SMALL,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert "local signing authority" not in finished.stderr
    assert c2pa_store(out, trust_anchor=tmp_path / "team" / "root.pem")["validation_state"] == "Trusted"
    assert team.local_authority == tmp_path / "team"


def test_edit_records_its_reference_images_and_no_prompt(encoder_server, tiny_snapshot, tmp_path):
    reference = scene_file(tmp_path / "cat.png", size=64)
    out = tmp_path / "edit.png"
    prompt = "give the cat a tiny crown"
    assert generate(encoder_server, tiny_snapshot, prompt, "--image", str(reference), "--out", str(out), *SMALL) == 0
    store = c2pa_store(out)
    manifest = store["manifests"][store["active_manifest"]]
    assert [(item["title"], item["relationship"]) for item in manifest["ingredients"]] == [
        ("reference-0.png", "inputTo")
    ]
    assert "tiny crown" not in str(store)


def test_marking_runs_on_the_writer_thread_not_the_denoising_one(encoder_server, tiny_snapshot, tmp_path):
    from diffusion_client import RemoteTextEncoder
    from diffusion_client.generation.generator import GeneratedImage, ImageGenerator
    from diffusion_client.generation.jobs import GenerationJob
    from diffusion_client.generation.pipeline import PipelineConfig, load_pipeline
    from diffusion_client.provenance.marking import Marker, MarkingOptions

    threads: list[str] = []

    class RecordingMarker(Marker):
        def mark(self, image, out, record, **options):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            return super().mark(image, out, record, **options)

    pipeline = load_pipeline(PipelineConfig(model_path=tiny_snapshot, device="cpu", quantize="none"))
    marker = RecordingMarker(MarkingOptions(c2pa=False), None)
    jobs = [GenerationJob(prompt=f"p{i}", out=tmp_path / f"{i}.png", steps=1, height=64, width=64) for i in range(3)]
    with RemoteTextEncoder(encoder_server.target) as encoder:
        generator = ImageGenerator(pipeline, encoder, model_name="tiny", progress=False, marker=marker)
        outcomes = list(generator.run(generator.prepare(jobs)))
    assert [type(outcome) for outcome in outcomes] == [GeneratedImage] * 3
    assert [outcome.path.name for outcome in outcomes] == ["0.png", "1.png", "2.png"]  # still in job order
    assert len(threads) == 3 and all(name.startswith("mark-and-write") for name in threads)


def test_long_non_ascii_prompt_in_a_jpeg_is_written_with_its_xmp_shortened(encoder_server, tiny_snapshot, tmp_path):
    """JPEG holds XMP in one 64 KiB segment, which 20,000 CJK characters and the settings overflow."""
    out = tmp_path / "long.jpg"
    prompt = "狐" * 20_000  # the server's default limit; 60 KB of UTF-8 before the rest of the settings
    assert generate(encoder_server, tiny_snapshot, prompt, "--out", str(out), *SMALL) == 0
    marks = check_file(out)
    assert marks.source_type is not None and marks.source_type.endswith("/trainedAlgorithmicMedia")
    with Image.open(out) as image:
        assert "shortened to fit the XMP packet" in image.info["xmp"].decode()
