"""`flux2-batch` refusing what cannot run, before any worker starts: in process, with Ray's start made a failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from diffusion_client.batch import runner
from diffusion_client.batch.cli import main as batch_main
from diffusion_client.batch.head import head_address
from diffusion_client.batch.outputs import OutputDir
from diffusion_client.errors import InputError
from tests.support.batch_runs import batch_command, batch_env, error_lines, write_jobs
from tests.support.cli_runs import dead_port
from tests.support.helpers import start_server
from tests.support.rlimits import measured, peak_rss_kib

HEAVY = ("torch", "diffusers", "transformers", "grpc", "PIL", "numpy", "ray", "pyarrow")
GOOD = {"prompt": "a lighthouse", "height": 64, "width": 64, "steps": 2}


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting Ray fails the test: what these runs refuse, they refuse before it."""

    def refuse(_address: object) -> Any:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(runner, "cluster", refuse)


@pytest.fixture
def batch(tiny_snapshot: Path, tmp_path: Path, no_ray: None, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """`batch(jobs, *flags)`: flux2-batch on these JSONL lines (dicts, or raw text) into tmp_path/out, in process;
    returns (exit code, our error lines, stderr)."""

    def run(lines: list[Any], *flags: str, encoder: str | None = None) -> tuple[int, list[str], str]:
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
        target = encoder or f"127.0.0.1:{dead_port()}"  # nothing listens: these runs must not need it
        argv = ["--prompts", str(prompts), "--encoder", target, "--model", str(tiny_snapshot)]
        argv += ["--out-dir", str(tmp_path / "out"), "--ray", "local", "--quiet", *flags]
        code = batch_main(argv)
        stderr = capsys.readouterr().err
        return code, error_lines(stderr), stderr

    return run


def test_importing_the_batch_cli_imports_nothing_heavy() -> None:
    probe = f"import sys, diffusion_client.batch.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    finished = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "[]"


def test_bad_lines_are_reported_together_one_line_each_before_anything_starts(batch, tmp_path):
    lines = [GOOD, "{not json", GOOD, {**GOOD, "steps": 0}, {**GOOD, "height": 65}, {"seed": 3}]
    code, errors, stderr = batch(lines)
    assert code == 2
    assert [error.split(": ")[2].rsplit(":", 1)[-1] for error in errors] == ["2", "4", "5", "6"]
    assert "not valid JSON" in errors[0] and "steps must be at least 1" in errors[1]
    assert "height 65 is not a multiple of 16" in errors[2] and '"prompt" string' in errors[3]
    assert "flux2-batch: note: 4 bad line(s)" in stderr
    assert not (tmp_path / "out").exists()  # nothing made, not even the folder


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"prompt": "x", "seed": NaN}', "'seed' must be a finite number"),
        ('{"prompt": "x", "height": 1e999}', "'height' must be a finite number"),
        ('{"prompt": "x", "width": 1e308}', "is out of range; use 16 to 4096"),
        ('{"prompt": "x", "steps": 1000000000}', "steps must be at most 1000"),
        ('{"prompt": "x", "seed": 1e30}', "seed must be between 0 and"),
        ('{"prompt": "x", "seed": -1}', "seed must be between 0 and"),
        ('{"prompt": "x", "guidance": -Infinity}', "'guidance' must be a finite number"),
        ('{"prompt": "x", "upsample_temperature": 1e9}', "temperature"),
    ],
    ids=["nan-seed", "infinite-height", "huge-width", "billion-steps", "huge-seed", "negative-seed",
         "infinite-guidance", "huge-temperature"],
)  # fmt: skip
def test_nan_and_huge_numbers_are_bad_lines(batch, line, message):
    code, errors, _ = batch([GOOD, line])
    assert code == 2
    [error] = errors
    assert "prompts.jsonl:2" in error and message in error


@pytest.mark.parametrize(
    "second,message",
    [
        ({"out": "cat.png"}, "writes cat.png, as"),
        ({"out": "CAT.png"}, "writes CAT.png, as"),  # one file on macOS's case-insensitive folders
        ({"out": "./cat.png"}, "writes cat.png, as"),
    ],
    ids=["same-out", "case-only", "dot-slash"],
)
def test_two_jobs_writing_one_output_are_refused(batch, second, message):
    code, errors, _ = batch([{**GOOD, "out": "cat.png"}, {**GOOD, **second}, {**GOOD}])
    assert code == 2
    [error] = errors
    assert "prompts.jsonl:2" in error and message in error


def test_a_line_whose_default_name_another_line_took_is_refused(batch):
    code, errors, _ = batch([GOOD, {**GOOD, "out": "image-000002.png"}, GOOD])
    assert code == 2
    [error] = errors
    assert "prompts.jsonl:3: writes image-000002.png, as" in error and "prompts.jsonl:2 does" in error


@pytest.mark.parametrize(
    "out,message",
    [
        ("../escaped.png", "must be a relative path inside --out-dir"),
        ("/etc/owned.png", "must be a relative path inside --out-dir"),
        ("sub/../../escaped.png", "must be a relative path inside --out-dir"),
        ("results.jsonl", "the manifest"),
        ("picture.gif", "the extension must be one of"),
    ],
    ids=["parent", "absolute", "nested-parent", "manifest", "gif"],
)
def test_an_out_outside_the_folder_or_of_another_kind_is_refused(batch, out, message):
    code, errors, _ = batch([{**GOOD, "out": out}])
    assert code == 2
    [error] = errors
    assert message in error


def test_an_out_through_a_symbolic_link_in_the_out_dir_is_a_bad_line(batch, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "evil").symlink_to(elsewhere)
    (tmp_path / "out" / "taken.png").symlink_to(elsewhere / "taken.png")  # a link in the file's own place
    code, errors, _ = batch([GOOD, {**GOOD, "out": "evil/a.png"}, {**GOOD, "out": "taken.png"}])
    assert code == 2
    assert [error.split(": ")[2].rsplit("/", 1)[1] for error in errors] == ["prompts.jsonl:2", "prompts.jsonl:3"]
    assert f"passes the symbolic link {tmp_path / 'out' / 'evil'} (to {elsewhere})" in errors[0]
    assert list(elsewhere.iterdir()) == []


def test_a_symbolic_link_planted_after_planning_fails_the_write_and_writes_nothing_outside(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for folder in (tmp_path / "local", tmp_path / "uri"):
        outputs = OutputDir.parse(str(folder) if folder.name == "local" else folder.as_uri())
        outputs.prepare()
        outputs.check_name("evil/a.png")  # planned while `evil` does not exist
        (folder / "evil").symlink_to(elsewhere)
        with pytest.raises(OSError, match="evil"):
            outputs.write("evil/a.png", b"image bytes")
        outputs.write("fine/a.png", b"image bytes")
        assert (folder / "fine" / "a.png").read_bytes() == b"image bytes"
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    "out,message",
    [
        (r"a\u0000b.png", "holds a NUL character"),
        ("n" * 252 + ".png", "has a name of 256 bytes; file systems take at most 255"),
        ("\u00e9" * 126 + ".png", "has a name of 256 bytes"),  # 130 characters, 256 bytes of UTF-8
        ("d/" * 600 + "a.png", "is 1,205 bytes long; the limit is 1,024"),
        (r"\ud800.png", "is not valid Unicode"),
        ("sub", "is a folder in --out-dir"),
    ],
    ids=["nul", "long-name", "long-utf8-name", "long-path", "lone-surrogate", "a-folder"],
)
def test_names_no_file_system_takes_are_bad_lines_before_anything_starts(batch, tmp_path, out, message):
    (tmp_path / "out" / "sub").mkdir(parents=True)
    line = json.dumps({**GOOD, "out": "OUT"}).replace('"OUT"', f'"{out}"')  # JSON escapes as a user writes them
    code, errors, stderr = batch([GOOD, line])
    assert code == 2, stderr
    [error] = errors
    assert "prompts.jsonl:2: " in error and message in error


def test_a_prompt_longer_than_the_encoder_takes_is_a_bad_line_before_any_worker_starts(batch, tiny_snapshot, tmp_path):
    lines = [GOOD, {**GOOD, "prompt": "y" * 65}, GOOD, {**GOOD, "prompt": "z" * 99}]
    with start_server(tiny_snapshot, max_prompt_chars=64) as server:
        code, errors, _ = batch(lines, encoder=server.target)
    assert code == 2
    takes = f"the encoder at {server.target} takes at most 64 (it uses only the first 512 tokens anyway)"
    assert errors == [
        f"flux2-batch: error: {tmp_path / 'prompts.jsonl'}:{number}: the prompt is {length} characters; {takes}"
        for number, length in ((2, 65), (4, 99))
    ]


def test_a_line_over_1_mib_is_a_bad_line_naming_its_number(batch):
    code, errors, _ = batch([GOOD, {**GOOD, "prompt": "y" * 2**21}, GOOD])
    assert code == 2
    [error] = errors
    assert error.endswith("prompts.jsonl:2: the line is over 1,048,576 bytes")


def test_a_64_mib_line_is_never_held_whole(tiny_snapshot, tmp_path):
    """The prompts file is read a line at a time: the run's peak memory is that of a run over a small bad file."""
    huge, small = tmp_path / "huge.jsonl", tmp_path / "small.jsonl"
    with huge.open("w") as file:
        file.write(json.dumps(GOOD) + '\n{"prompt": "')
        for _ in range(64):
            file.write("y" * 2**20)
        file.write('"}\n')
    small.write_text(json.dumps(GOOD) + '\n{"prompt": "x", "bad": 1}\n')
    peaks = {}
    for prompts in (huge, small):
        flags = ["--prompts", str(prompts), "--model", str(tiny_snapshot), "--out-dir", str(tmp_path / "out")]
        finished = subprocess.run(measured(batch_command(*flags)), capture_output=True, text=True, env=batch_env())
        peaks[prompts], stderr = peak_rss_kib(finished.stderr)
        assert finished.returncode == 2, stderr
        assert [line.split(": ")[2] for line in error_lines(stderr)] == [f"{prompts}:2"]
    grown_mib = (peaks[huge] - peaks[small]) / 1024
    assert grown_mib < 16, f"a 64 MiB line raised the peak by {grown_mib:.0f} MiB"


def test_the_manifest_is_ascii_so_no_name_breaks_its_lines():
    from diffusion_client.batch.results import JobResult, manifest_bytes

    odd = JobResult(0, "p.jsonl:1", "/out/a\u2028b\u0085c\u00e9.png", 0, 1.0, "failed", "said \u2029 this")
    data = manifest_bytes([odd])
    assert data.isascii() and len(data.decode().splitlines()) == 1
    assert json.loads(data) == {**json.loads(odd.manifest_line()), "output": "/out/a\u2028b\u0085c\u00e9.png"}


def test_an_out_dir_that_is_a_file_exits_2_in_one_line(batch, tmp_path):
    (tmp_path / "out").write_text("a file")
    code, errors, _ = batch([GOOD])
    assert code == 2
    assert errors == [f"flux2-batch: error: --out-dir {tmp_path / 'out'} is a file, not a folder"]


@pytest.mark.parametrize("workers", ["0", "-1", "nan", "1.5", "two", ""])
def test_workers_must_be_a_whole_number_from_1(batch, workers):
    code, errors, _ = batch([GOOD], "--workers", workers)
    assert code == 2
    [error] = errors
    assert f"--workers: must be a whole number, 1 or more, not {workers!r}" in error


def test_an_encoder_that_is_down_fails_in_one_line_before_any_worker_starts(batch):
    code, errors, _ = batch([GOOD], "--connect-timeout", "1")
    assert code == 3
    [error] = errors
    assert "127.0.0.1" in error


def test_nothing_left_to_do_exits_0_without_ray_or_encoder(batch, tmp_path):
    (tmp_path / "out").mkdir()
    for name in ("image-000000.png", "image-000001.png"):
        (tmp_path / "out" / name).write_bytes(b"a finished image")
    code, errors, _ = batch([GOOD, GOOD])  # nothing listens at the encoder's address either
    assert (code, errors) == (0, [])
    manifest = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [row["status"] for row in manifest] == ["skipped", "skipped"]


def test_without_ray_installed_it_says_what_to_install_in_one_line(batch, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` then raises ImportError
    code, errors, _ = batch([GOOD])
    assert code == 2
    assert errors == [
        "flux2-batch: error: flux2-batch runs on Ray, which is not installed: pip install 'flux2-split[ray]'"
    ]


def fake_ray(**resources: float) -> Any:
    return SimpleNamespace(cluster_resources=lambda: resources)


def test_pool_is_one_worker_per_gpu_by_default_and_one_on_cpu():
    assert runner.size_pool(fake_ray(CPU=16, GPU=4), "auto", None, 1) == runner.Pool(4, "cuda", 1)
    assert runner.size_pool(fake_ray(CPU=16), "auto", None, 1) == runner.Pool(1, "cpu", 1)
    assert runner.size_pool(fake_ray(CPU=16, GPU=4), "cpu", 3, 2) == runner.Pool(3, "cpu", 2)


@pytest.mark.parametrize(
    "resources,device,workers,cpus,message",
    [
        ({"CPU": 16, "GPU": 2}, "auto", 3, 1, "--workers 3 needs 3 GPUs, but the Ray cluster has 2"),
        ({"CPU": 16}, "cuda", None, 1, "the Ray cluster has no GPUs"),
        ({"CPU": 2}, "cpu", 2, 2, "need 4 CPUs, but the Ray cluster has 2"),
    ],
    ids=["more-workers-than-gpus", "cuda-without-gpus", "more-cpus-than-the-cluster"],
)
def test_a_pool_the_cluster_cannot_hold_is_refused_instead_of_waiting_forever(
    resources, device, workers, cpus, message
):
    with pytest.raises(InputError, match=message):
        runner.size_pool(fake_ray(**resources), device, workers, cpus)


def test_a_filesystem_uri_is_written_whole_through_pyarrow(tmp_path):
    outputs = OutputDir.parse((tmp_path / "remote").as_uri())
    assert outputs.local is None and outputs.filesystem is not None
    outputs.prepare()
    outputs.write("sub/image-000000.png", b"image bytes")
    assert (tmp_path / "remote" / "sub" / "image-000000.png").read_bytes() == b"image bytes"
    assert outputs.exists("sub/image-000000.png") and not outputs.exists("image-000001.png")
    assert outputs.existing() == {"sub/image-000000.png"}
    assert outputs.path("sub/image-000000.png") == f"{(tmp_path / 'remote').as_uri()}/sub/image-000000.png"


def test_a_failed_write_through_pyarrow_leaves_neither_the_file_nor_its_temporary(tmp_path):
    outputs = OutputDir.parse((tmp_path / "remote").as_uri())
    outputs.prepare()
    (tmp_path / "remote" / "taken").write_text("a file where a folder should be")
    with pytest.raises(OSError):
        outputs.write("taken/image-000000.png", b"image bytes")
    assert sorted(path.name for path in (tmp_path / "remote").iterdir()) == ["taken"]


def test_a_uri_pyarrow_cannot_open_is_one_input_error():
    with pytest.raises(InputError, match="pyarrow cannot open it"):
        OutputDir.parse("nosuchscheme://bucket/run")


def test_the_same_prompts_file_plans_the_same_names(tmp_path):
    from diffusion_client.batch.plan import plan_jobs
    from diffusion_client.generation.jobs import GenerationJob

    prompts = write_jobs(tmp_path / "prompts.jsonl", [GOOD, {**GOOD, "out": "sub/named.webp"}, GOOD])
    defaults = GenerationJob(prompt="", out=Path())
    first, again = plan_jobs(prompts, defaults, 16), plan_jobs(prompts, defaults, 16)
    assert [job.name for job in first] == ["image-000000.png", "sub/named.webp", "image-000002.png"]
    assert first == again


def test_the_rayjob_example_runs_a_command_flux2_batch_accepts() -> None:
    import shlex

    import yaml

    from diffusion_client.batch.cli import build_parser

    rayjob = yaml.safe_load((Path(__file__).parents[2] / "deploy" / "rayjob.yaml").read_text())
    command = shlex.split(rayjob["spec"]["entrypoint"])
    assert command[0] == "flux2-batch"
    args = build_parser().parse_args(command[1:])
    assert args.out_dir.startswith("s3://") and args.ray is None  # KubeRay's RAY_ADDRESS names the cluster


def test_a_ray_address_without_a_port_is_refused() -> None:
    with pytest.raises(InputError, match="give the head's HOST:PORT"):
        head_address("head-node")


def test_nf4_on_cpu_workers_is_refused_before_anything_starts(batch):
    code, errors, _ = batch([GOOD], "--quantize", "nf4", "--device", "cpu")
    assert code == 2
    [error] = errors
    assert "--quantize nf4 needs CUDA workers" in error
