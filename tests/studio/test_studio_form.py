"""What the page sends is checked field by field: anyone can post to the page's API, not only its widgets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from diffusion_client.errors import InputError
from diffusion_client.studio.auth import exposure_notes, read_credentials
from diffusion_client.studio.form import MAX_PAGE_SEED, MAX_PAGE_STEPS, MAX_REFERENCES, RANDOM_SEED_RANGE, read_form
from diffusion_client.studio.loras import MAX_APPLIED, chosen_loras, lora_rows

GOOD = dict(prompt="a fox", seed=7, random_seed=False, steps=4, guidance=4.0, width=256, height=256)


def form(**changes):  # type: ignore[no-untyped-def]
    return read_form(**{**GOOD, **changes})


def test_a_good_form_becomes_a_request_with_whole_numbers():
    request = form(seed=7.0, width=256.0)
    assert (request.seed, request.width, request.steps, request.guidance) == (7, 256, 4, 4.0)
    assert isinstance(request.seed, int) and request.rewrite is None


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("seed", math.nan, "seed must be a whole number"),
        ("seed", math.inf, "seed must be a whole number"),
        ("seed", -1, "seed -1 is out of range"),
        ("seed", 2**64, "out of range"),
        ("width", 17.6, "width must be a whole number"),
        ("seed", 1.5, "seed must be a whole number"),
        ("seed", "7", "seed must be a whole number, not str"),
        ("seed", None, "seed is empty"),
        ("steps", 0, "steps 0 is out of range; use 1 to"),
        ("steps", MAX_PAGE_STEPS + 1, "out of range"),
        ("steps", True, "steps must be a whole number, not bool"),
        ("guidance", math.nan, "guidance must be a finite number"),
        ("guidance", -math.inf, "guidance must be a finite number"),
        ("width", [256], "width must be a whole number, not list"),
        ("height", 10**30, "out of range"),
        ("prompt", "   ", "the prompt is empty"),
        ("prompt", "x" * 20_001, "the prompt is 20,001 characters; the limit is 20,000"),
        ("prompt", {"text": "a"}, "the prompt must be text"),
        ("upsample", "yes", "upsample must be true or false"),
    ],
)
def test_a_bad_field_is_one_line_naming_it(field, value, fragment):
    with pytest.raises(InputError) as raised:
        form(**{field: value})
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_a_random_seed_is_drawn_when_asked_and_ignores_the_field():
    seeds = {form(seed=None, random_seed=True).seed for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= seed < RANDOM_SEED_RANGE for seed in seeds)


def test_too_many_reference_images_are_refused():
    with pytest.raises(InputError, match=f"the limit is {MAX_REFERENCES}"):
        form(references=[f"/tmp/{number}.png" for number in range(MAX_REFERENCES + 1)])


def test_a_reference_that_is_not_a_file_path_is_refused():
    with pytest.raises(InputError, match="did not arrive as a file"):
        form(references=[{"path": 3}])


def test_the_rewrite_is_used_exactly_as_shown_and_only_while_upsampling():
    assert form(upsample=True, rewrite="  a detailed fox \n").rewrite == "  a detailed fox \n"  # as the CLI encodes it
    assert form(upsample=True, rewrite="   ").rewrite is None  # empty: ask the server
    assert form(upsample=False, rewrite="a detailed fox").rewrite is None


def test_a_new_random_seed_asks_for_a_new_rewrite():
    assert form(upsample=True, random_seed=True, rewrite="made with an earlier seed").rewrite is None


def test_a_seed_a_browser_cannot_carry_exactly_says_to_use_the_cli():
    assert form(seed=MAX_PAGE_SEED).seed == MAX_PAGE_SEED
    with pytest.raises(InputError, match="a browser cannot carry larger seeds exactly; use flux2-generate"):
        form(seed=2**53)


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    (tmp_path / "styles").mkdir()
    for name in ("a.safetensors", "styles/b.safetensors"):
        (tmp_path / name).write_bytes(b"not read by the picker")
    (tmp_path / "notes.txt").write_text("not a LoRA")
    return tmp_path


def test_the_lora_table_lists_the_folders_safetensors_off(lora_dir):
    assert lora_rows(lora_dir) == [["a.safetensors", 0.0], ["styles/b.safetensors", 0.0]]
    assert lora_rows(None) == []


def test_rows_with_a_scale_become_specs_and_zero_means_off(lora_dir):
    specs = chosen_loras([["a.safetensors", 0], ["styles/b.safetensors", "0.75"]], lora_dir)
    assert [(spec.path, spec.scale) for spec in specs] == [(lora_dir / "styles/b.safetensors", 0.75)]


@pytest.mark.parametrize("empty", [None, "", " ", math.nan, "0", 0.0])
def test_an_empty_or_zero_scale_cell_means_off(lora_dir, empty):
    assert chosen_loras([["a.safetensors", empty]], lora_dir) == ()


def test_a_bad_scale_names_the_lora_as_listed_not_where_the_server_keeps_it(lora_dir):
    with pytest.raises(InputError) as raised:
        chosen_loras([["styles/b.safetensors", 1e9]], lora_dir)
    assert "LoRA styles/b.safetensors:" in str(raised.value) and str(lora_dir) not in str(raised.value)


@pytest.mark.parametrize("name", ["../a.safetensors", "/etc/passwd", "c.safetensors", 7])
def test_a_lora_the_folder_does_not_offer_is_refused(lora_dir, name):
    with pytest.raises(InputError, match="is not in the LoRA folder"):
        chosen_loras([[name, 1.0]], lora_dir)


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ([["a.safetensors", "strong"]], "scale must be a number"),
        ([["a.safetensors", 1e9]], "LoRA a.safetensors: scale must be a finite number"),
        ([["a.safetensors", "inf"]], "LoRA a.safetensors: scale must be a finite number"),
        ([["a.safetensors"]], "each LoRA row holds a name and a scale"),
        ("a.safetensors", "did not arrive as rows"),
    ],
)
def test_a_bad_lora_row_is_one_line(lora_dir, rows, fragment):
    with pytest.raises(InputError, match=fragment):
        chosen_loras(rows, lora_dir)


def test_more_loras_than_the_limit_are_refused(tmp_path):
    for number in range(MAX_APPLIED + 1):
        (tmp_path / f"{number}.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match=f"the limit is {MAX_APPLIED}"):
        chosen_loras([[row[0], 1.0] for row in lora_rows(tmp_path)], tmp_path)


def test_credentials_are_user_password_lines_with_comments(tmp_path):
    path = tmp_path / "auth"
    path.write_text("# the team\nana:pa:ss\n\nbo:secret\n")
    assert read_credentials(path) == [("ana", "pa:ss"), ("bo", "secret")]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "has no user:password lines"), ("ana\n", ":1: each line is user:password"), (":pw\n", "user:password")],
)
def test_a_malformed_auth_file_is_one_line_that_never_echoes_a_password(tmp_path, text, fragment):
    path = tmp_path / "auth"
    path.write_text(text)
    with pytest.raises(InputError, match=fragment) as raised:
        read_credentials(path)
    assert "pw" not in str(raised.value)


def test_listening_beyond_loopback_without_a_login_gets_a_note(tmp_path):
    assert exposure_notes("127.0.0.1", None) == []
    assert "anyone who reaches this port can generate" in exposure_notes("0.0.0.0", None)[0]


def test_a_password_file_others_can_read_gets_a_note(tmp_path):
    path = tmp_path / "auth"
    path.write_text("ana:secret\n")
    path.chmod(0o644)
    assert exposure_notes("0.0.0.0", path) == [f"{path} can be read by other users of this machine; chmod 600 it"]
    path.chmod(0o600)
    assert exposure_notes("0.0.0.0", path) == []


def test_a_password_is_taken_exactly_as_written_only_the_line_end_dropped(tmp_path):
    path = tmp_path / "auth"
    path.write_bytes(b"ana:pass word \nbo: lead\r\ncy:tab\t\n")
    assert read_credentials(path) == [("ana", "pass word "), ("bo", " lead"), ("cy", "tab\t")]


def test_a_padded_user_name_is_trimmed_as_the_login_form_trims_what_is_typed(tmp_path):
    path = tmp_path / "auth"
    path.write_text("  ana :secret\n")
    assert read_credentials(path) == [("ana", "secret")]


def test_a_user_listed_twice_is_one_line_naming_both_lines_and_no_password(tmp_path):
    path = tmp_path / "auth"
    path.write_text("ana:first-secret\nbo:other\n ana:second-secret\n")
    with pytest.raises(InputError) as raised:
        read_credentials(path)
    message = str(raised.value)
    assert f"{path}:3:" in message and "line 1" in message and "\n" not in message
    assert "secret" not in message and "ana" not in message
