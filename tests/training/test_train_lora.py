"""`flux2-train-lora` on the tiny snapshot through a real encoder server: it writes a LoRA diffusers loads, asks
the server for each caption once across runs, never builds a text encoder, learns, resumes exactly, and refuses
bad data in one line before any weights load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from PIL import Image

from diffusion_client.training.cli import main as train_main
from tests.generation.test_generate import generate, pixels
from tests.generation.test_generate_errors import hand_made_png
from tests.support.cli_runs import dead_port
from tests.support.helpers import RunningServer, prompts_encoded, start_server
from tests.support.lora_files import to_bfl, to_kohya
from tests.support.rlimits import limited

RED = (200, 30, 30)
CAPTION = "a flat sks red square"
FAST = ["--resolution", "64", "--rank", "4", "--quiet"]


def flat_images(folder: Path, colours: list[tuple[int, int, int]], caption: str | None = CAPTION) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, colour in enumerate(colours):
        Image.new("RGB", (64, 64), colour).save(folder / f"image{index}.png")
        if caption is not None:
            (folder / f"image{index}.txt").write_text(f"{caption} {index % 2}")  # two distinct captions
    return folder


@pytest.fixture(scope="module")
def counting_server(tiny_snapshot: Path) -> Iterator[RunningServer]:
    """No server-side cache: every prompt the server is asked for runs a forward pass, so passes count requests."""
    with start_server(tiny_snapshot, cache_bytes=0, max_batch_size=4) as server:
        yield server


def train(server: RunningServer, snapshot: Path, data: Path, out: Path, *flags: str) -> int:
    args = ["--data", str(data), "--model", str(snapshot), "--encoder", server.target, "--out", str(out)]
    return train_main([*args, *FAST, *flags])


@pytest.fixture(scope="module")
def trained(counting_server, tiny_snapshot, tmp_path_factory) -> dict[str, Any]:
    """One short run, watched: which models were built, and what the server computed."""
    import transformers

    folder = tmp_path_factory.mktemp("train")
    data = flat_images(folder / "data", [RED] * 4)
    built: list[str] = []
    original = transformers.PreTrainedModel.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    before = prompts_encoded(counting_server)
    transformers.PreTrainedModel.__init__ = recording  # type: ignore[method-assign]
    try:
        code = train(counting_server, tiny_snapshot, data, folder / "out", "--steps", "6", "--checkpoint-every", "3")
    finally:
        transformers.PreTrainedModel.__init__ = original  # type: ignore[method-assign]
    return {
        "code": code,
        "data": data,
        "out": folder / "out",
        "built": built,
        "computed": prompts_encoded(counting_server) - before,
    }


def test_training_writes_a_lora_in_diffusers_format_with_how_it_was_made(trained, tiny_snapshot):
    assert trained["code"] == 0
    lora = trained["out"] / "pytorch_lora_weights.safetensors"
    keys = safetensors.torch.load_file(lora)
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    with safetensors.safe_open(lora, framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["lora_adapter_metadata"])["transformer.r"] == 4
    assert metadata["flux2_split.base_model"] == tiny_snapshot.name
    assert metadata["flux2_split.steps"] == "6" and metadata["flux2_split.rank"] == "4"
    for field in ("dataset_sha256", "encoder_fingerprint", "transformer_fingerprint"):
        assert len(metadata[f"flux2_split.{field}"]) == 64


def test_training_process_never_builds_a_text_encoder(trained):
    assert trained["code"] == 0
    assert trained["built"] == []  # no transformers model at all: the DiT and VAE are diffusers models


def test_second_run_takes_every_caption_from_disk(trained, counting_server, tiny_snapshot, capsys):
    assert trained["computed"] == 2  # two distinct captions over four images, each asked for once
    before = prompts_encoded(counting_server)
    again = ["--steps", "2", "--cache-dir", str(trained["out"] / "cache")]  # a new run, the first run's caches
    assert train(counting_server, tiny_snapshot, trained["data"], trained["out"].with_name("again"), *again) == 0
    assert prompts_encoded(counting_server) == before
    assert "0 captions encoded, 2 from disk" in capsys.readouterr().out


def test_checkpoints_hold_adapter_optimizer_and_state(trained):
    (checkpoint,) = sorted((trained["out"] / "checkpoints").iterdir())
    assert checkpoint.name == "step-000003"
    assert {path.name for path in checkpoint.iterdir()} == {"adapter.safetensors", "optimizer.pt", "state.json"}
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 3


def test_trained_lora_gives_diffusers_own_image_in_every_key_layout(trained, encoder_server, tiny_snapshot, tmp_path):
    from diffusers import Flux2Pipeline

    lora = trained["out"] / "pytorch_lora_weights.safetensors"
    pipeline = Flux2Pipeline.from_pretrained(tiny_snapshot, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_lora_weights(str(lora))
    expected = np.asarray(
        pipeline(prompt=CAPTION, height=64, width=64, num_inference_steps=3, guidance_scale=4.0,
                 generator=torch.Generator("cpu").manual_seed(0)).images[0]
    )  # fmt: skip
    size = ["--height", "64", "--width", "64", "--steps", "3"]
    for name, path in (
        ("diffusers", lora),
        ("kohya", to_kohya(lora, tmp_path / "kohya.safetensors")),
        ("bfl", to_bfl(lora, tmp_path / "bfl.safetensors")),
    ):
        out = tmp_path / f"{name}.png"
        assert generate(encoder_server, tiny_snapshot, CAPTION, "--lora", str(path), "--out", str(out), *size) == 0
        difference = np.abs(pixels(out).astype(int) - expected.astype(int)).max()
        assert difference <= (0 if name != "bfl" else 1), name  # BFL fuses q/k/v: the same sums, in another order


def _packed_latents(pipeline: Any, prompt_embeds: torch.Tensor, seed: int) -> torch.Tensor:
    return pipeline(
        prompt_embeds=prompt_embeds, height=64, width=64, num_inference_steps=8, guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
    ).images  # fmt: skip


def test_lora_trained_on_one_colour_generates_closer_to_it(counting_server, tiny_snapshot, tmp_path):
    """Measured in the latent space the model works in: the tiny VAE's random decoder washes colour out of pixels.
    Without the LoRA, 8-step generations are ~1.43 (mean squared) from the training latents; 100 steps bring them
    about 10 % closer."""
    from diffusers import Flux2Pipeline

    data = flat_images(tmp_path / "data", [RED] * 4, caption=CAPTION)
    out = tmp_path / "out"
    flags = ["--steps", "100", "--learning-rate", "1e-2", "--target-modules", "all-blocks", "--rank", "8"]
    assert train(counting_server, tiny_snapshot, data, out, *flags) == 0
    (latents_file,) = (out / "cache" / "latents").glob("*/*.safetensors")  # four identical images: one latent
    target = safetensors.torch.load_file(latents_file)["latents"]  # [C, h, w]
    packed_target = target.reshape(target.shape[0], -1).T[None]  # [1, h*w, C], as the pipeline's latents
    captions = sorted((out / "cache" / "captions").glob("*/*.safetensors"))
    prompt_embeds = safetensors.torch.load_file(captions[0])["prompt_embeds"][None]
    pipeline = Flux2Pipeline.from_pretrained(tiny_snapshot, text_encoder=None, tokenizer=None, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    without = [((_packed_latents(pipeline, prompt_embeds, seed) - packed_target) ** 2).mean() for seed in range(3)]
    pipeline.load_lora_weights(str(out / "pytorch_lora_weights.safetensors"))
    with_lora = [((_packed_latents(pipeline, prompt_embeds, seed) - packed_target) ** 2).mean() for seed in range(3)]
    for before, after in zip(without, with_lora, strict=True):
        assert after < 0.95 * before, (without, with_lora)


def test_resume_after_sigterm_ends_with_the_weights_of_an_uninterrupted_run(counting_server, tiny_snapshot, tmp_path):
    data = flat_images(tmp_path / "data", [RED, (30, 200, 30), (30, 30, 200)])
    flags = [*FAST, "--steps", "40", "--checkpoint-every", "1000", "--learning-rate", "1e-3"]
    common = ["--data", str(data), "--model", str(tiny_snapshot), "--encoder", counting_server.target]
    assert train_main([*common, "--out", str(tmp_path / "whole"), *flags]) == 0
    command = [sys.executable, "-m", "diffusion_client.training.cli", *common, "--out", str(tmp_path / "cut"), *flags]
    command.remove("--quiet")  # the progress bar tells when training has started
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    seen = ""
    while "training:" not in seen and process.poll() is None:
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, seen + rest
    assert "stopped by SIGTERM at step" in rest and "resume with --resume" in rest
    assert not (tmp_path / "cut" / "pytorch_lora_weights.safetensors").exists()
    assert train_main([*common, "--out", str(tmp_path / "cut"), "--resume", str(tmp_path / "cut"), *flags]) == 0
    whole = safetensors.torch.load_file(tmp_path / "whole" / "pytorch_lora_weights.safetensors")
    resumed = safetensors.torch.load_file(tmp_path / "cut" / "pytorch_lora_weights.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def _refused(capsys: pytest.CaptureFixture[str], data: Path, tiny_snapshot: Path, tmp_path: Path, *extra: str) -> str:
    """Run against a port nothing listens on: bad data must be found before the encoder or weights are needed."""
    args = ["--data", str(data), "--model", str(tiny_snapshot), "--encoder", f"127.0.0.1:{dead_port()}"]
    assert train_main([*args, "--out", str(tmp_path / "out"), *FAST, *extra]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flux2-train-lora: error: ")]
    assert len(lines) == 1
    return lines[0]


def test_empty_data_folder_is_refused_in_one_line(capsys, tiny_snapshot, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "holds no images" in _refused(capsys, tmp_path / "empty", tiny_snapshot, tmp_path)


def test_image_without_caption_or_instance_prompt_is_refused_naming_it(capsys, tiny_snapshot, tmp_path):
    data = flat_images(tmp_path / "data", [RED], caption=None)
    message = _refused(capsys, data, tiny_snapshot, tmp_path)
    assert "image0.png has no caption image0.txt" in message and "--instance-prompt" in message


def test_corrupt_image_is_refused_naming_it(capsys, tiny_snapshot, tmp_path):
    data = flat_images(tmp_path / "data", [RED])
    (data / "image0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    assert "image0.png" in _refused(capsys, data, tiny_snapshot, tmp_path)


def test_image_claiming_20000_squared_pixels_is_refused_before_decoding(capsys, tiny_snapshot, tmp_path):
    data = flat_images(tmp_path / "data", [RED])
    (data / "image0.png").write_bytes(hand_made_png(20000, 20000))
    message = _refused(capsys, data, tiny_snapshot, tmp_path)
    assert "image0.png is 400,000,000 pixels" in message


def test_caption_that_is_not_utf8_is_refused_naming_it(capsys, tiny_snapshot, tmp_path):
    data = flat_images(tmp_path / "data", [RED])
    (data / "image0.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert "image0.txt is not UTF-8" in _refused(capsys, data, tiny_snapshot, tmp_path)


def test_metadata_file_naming_a_file_outside_the_folder_is_refused(capsys, tiny_snapshot, tmp_path):
    data = flat_images(tmp_path / "data", [RED])
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "../../etc/passwd", "text": "x"}))
    assert "outside the data folder" in _refused(capsys, data, tiny_snapshot, tmp_path)


@pytest.mark.parametrize("flag", [["--learning-rate", "nan"], ["--alpha", "inf"], ["--resolution", "100"]])
def test_bad_numbers_in_flags_are_refused_in_one_line(capsys, tiny_snapshot, tmp_path, flag):
    data = flat_images(tmp_path / "data", [RED])
    _refused(capsys, data, tiny_snapshot, tmp_path, *flag)


def test_edit_pairs_from_metadata_train_with_their_reference_images(counting_server, tiny_snapshot, tmp_path):
    data = flat_images(tmp_path / "data", [RED, (30, 30, 200)], caption=None)
    lines = [{"file_name": "image0.png", "text": "make it red", "images": ["image1.png"]}]
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    assert train(counting_server, tiny_snapshot, data, tmp_path / "out", "--steps", "2") == 0
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    assert len(list((tmp_path / "out" / "cache" / "latents").glob("*/*"))) == 2  # target and reference


def test_validation_images_are_written_beside_the_checkpoints(counting_server, tiny_snapshot, tmp_path):
    data = flat_images(tmp_path / "data", [RED])
    flags = ["--steps", "2", "--validation-prompt", CAPTION, "--validate-every", "1", "--validation-steps", "2"]
    assert train(counting_server, tiny_snapshot, data, tmp_path / "out", *flags) == 0
    written = sorted(path.name for path in (tmp_path / "out" / "validation").iterdir())
    assert written == ["step-000001.png", "step-000002.png"]


def test_training_that_diverges_stops_in_one_line_without_writing_nan_weights(
    counting_server, tiny_snapshot, tmp_path, capsys
):
    data = flat_images(tmp_path / "data", [RED])
    assert train(counting_server, tiny_snapshot, data, tmp_path / "out", "--steps", "5", "--learning-rate", "1e30") == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flux2-train-lora: error:")]
    assert "lower --learning-rate" in line
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()


def test_output_folder_that_cannot_be_written_is_one_line(counting_server, tiny_snapshot, tmp_path, capsys):
    data = flat_images(tmp_path / "data", [RED])
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the checkpoints folder goes")
    assert train(counting_server, tiny_snapshot, data, out, "--steps", "2", "--checkpoint-every", "1") == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flux2-train-lora: error:")]
    assert "could not write checkpoint 1: " in line and "no checkpoint was written yet" in line


@pytest.mark.timeout(60)  # reading a FIFO waits for a writer that never comes
@pytest.mark.parametrize("fifo", ["metadata.jsonl", "image0.png", "image0.txt", "pipe.png"])
def test_a_fifo_among_the_data_files_is_refused_naming_it(capsys, tiny_snapshot, tmp_path, fifo):
    data = flat_images(tmp_path / "data", [RED])
    if fifo == "pipe.png":  # named by metadata.jsonl
        (data / "metadata.jsonl").write_text(json.dumps({"file_name": "pipe.png", "text": CAPTION}))
    else:
        (data / fifo).unlink(missing_ok=True)
    os.mkfifo(data / fifo)
    message = _refused(capsys, data, tiny_snapshot, tmp_path)
    assert f"{fifo} is not a regular file" in message


@pytest.mark.parametrize("layout", ["folder", "metadata"])
def test_a_link_leading_out_of_the_data_folder_is_refused_in_either_layout(capsys, tiny_snapshot, tmp_path, layout):
    outside = flat_images(tmp_path / "elsewhere", [RED], caption=None) / "image0.png"
    data = flat_images(tmp_path / "data", [RED])
    (data / "linked.png").symlink_to(outside)
    (data / "linked.txt").write_text(CAPTION)
    if layout == "metadata":
        (data / "metadata.jsonl").write_text(json.dumps({"file_name": "linked.png", "text": CAPTION}))
    assert "linked.png is outside the data folder" in _refused(capsys, data, tiny_snapshot, tmp_path)


FULL = "disk full (file size limit reached)"  # what RLIMIT_FSIZE's EFBIG is reported as


def _train_process(
    server: RunningServer, snapshot: Path, data: Path, out: Path, *flags: str, file_size: int
) -> subprocess.CompletedProcess[str]:
    """flux2-train-lora in its own process, where no file may grow past `file_size` bytes (a full disk)."""
    args = ["--data", str(data), "--model", str(snapshot), "--encoder", server.target, "--out", str(out)]
    command = limited([sys.executable, "-m", "diffusion_client.training.cli", *args, *FAST, *flags], FSIZE=file_size)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def _one_error(finished: subprocess.CompletedProcess[str]) -> str:
    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr, finished.stderr
    (line,) = [line for line in finished.stderr.splitlines() if line.startswith("flux2-train-lora:")]
    assert line.startswith("flux2-train-lora: error: ")
    return line


def test_full_disk_at_a_checkpoint_names_the_checkpoint_still_intact(trained, counting_server, tiny_snapshot, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained["out"], out)  # checkpoint 3 and the caches
    adapter_bytes = (out / "checkpoints" / "step-000003" / "adapter.safetensors").stat().st_size
    flags = ["--resume", str(out), "--steps", "5", "--checkpoint-every", "1"]
    finished = _train_process(counting_server, tiny_snapshot, trained["data"], out, *flags, file_size=adapter_bytes + 1)
    line = _one_error(finished)  # the adapter fits; the optimizer's state, twice its size, does not
    intact = out / "checkpoints" / "step-000003"
    assert (
        f"could not write checkpoint 4: disk full (file size limit reached); checkpoint 3 ({intact}) is intact" in line
    )
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["step-000003"]  # no staging left


def test_full_disk_at_the_final_lora_leaves_no_partial_file(trained, counting_server, tiny_snapshot, tmp_path):
    out = tmp_path / "out"
    flags = ["--steps", "1", "--cache-dir", str(trained["out"] / "cache")]  # cached captions and latents: only reads
    finished = _train_process(counting_server, tiny_snapshot, trained["data"], out, *flags, file_size=4096)
    line = _one_error(finished)
    lora = out / "pytorch_lora_weights.safetensors"
    assert (
        f"could not write the LoRA {lora}: disk full (file size limit reached); no checkpoint was written yet" in line
    )
    assert list(out.iterdir()) == []


def test_full_disk_while_caching_captions_is_one_line(counting_server, tiny_snapshot, tmp_path):
    data = flat_images(tmp_path / "data", [RED])
    finished = _train_process(counting_server, tiny_snapshot, data, tmp_path / "out", "--steps", "1", file_size=1024)
    line = _one_error(finished)
    assert "could not write " in line and FULL in line


@pytest.mark.parametrize(("flag", "trained_with"), [(["--rank", "8"], "--rank 4"), (["--alpha", "2"], "--alpha 4")])
def test_resume_with_another_rank_or_alpha_is_refused_naming_both(
    trained, counting_server, tiny_snapshot, tmp_path, capsys, flag, trained_with
):
    flags = ["--resume", str(trained["out"]), "--steps", "8", *flag]
    assert train(counting_server, tiny_snapshot, trained["data"], tmp_path / "out", *flags) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flux2-train-lora:")]
    assert f"was trained with {trained_with}, not {' '.join(flag)}; give {trained_with} to continue" in line


def test_resume_with_another_seed_notes_it_once_and_continues(
    trained, counting_server, tiny_snapshot, tmp_path, capsys
):
    out = tmp_path / "out"
    flags = ["--resume", str(trained["out"]), "--steps", "4", "--seed", "7"]
    assert train(counting_server, tiny_snapshot, trained["data"], out, *flags) == 0
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flux2-train-lora:")]
    assert len(ours) == 1 and ours[0].startswith("flux2-train-lora: note: ")
    assert "was trained with --seed 0; steps 4 to 4 draw their examples and noise from --seed 7" in ours[0]
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_staging_left_by_a_killed_run_is_removed_at_start_and_nothing_else(
    counting_server, tiny_snapshot, tmp_path, capsys
):
    data = flat_images(tmp_path / "data", [RED])
    out = tmp_path / "out"
    ours = [out / "checkpoints" / ".step-000250.0123abcd.tmp", out / ".lora-89abcdef.tmp"]
    theirs = [out / "checkpoints" / ".step-000250.mine.tmp", out / "checkpoints" / "notes", out / ".lora-keep.tmp"]
    for folder in ours + theirs:
        folder.mkdir(parents=True)
        (folder / "adapter.safetensors").write_bytes(b"half a file")
    (out / ".pytorch_lora_weights.0123abcd.tmp").write_bytes(b"half a LoRA")
    assert train(counting_server, tiny_snapshot, data, out, "--steps", "1") == 0
    assert not any(path.exists() for path in ours) and not (out / ".pytorch_lora_weights.0123abcd.tmp").exists()
    assert all((path / "adapter.safetensors").exists() for path in theirs)
    assert "removed 3 unfinished" in capsys.readouterr().err
