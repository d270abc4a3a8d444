"""Signed C2PA manifests: what they state, that c2pa's own Reader validates them, and the local authority."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading

import pytest

from diffusion_client.errors import InputError
from diffusion_client.provenance.authority import ROOT_CERT, SIGNER_CHAIN, SIGNER_KEY, local_authority
from diffusion_client.provenance.iptc import TRAINED_ALGORITHMIC_MEDIA
from diffusion_client.provenance.marking import Marker, MarkingOptions
from tests.support.c2pa_files import c2pa_store, flip_one_pixel_byte, marked_file, scene_file


def active(store: dict) -> dict:
    return store["manifests"][store["active_manifest"]]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_c2pa_reader_validates_each_output_format(tmp_path, suffix):
    out = marked_file(tmp_path / f"image{suffix}")
    store = c2pa_store(out)
    assert store["validation_state"] == "Valid"
    failures = [item["code"] for item in store["validation_results"]["activeManifest"]["failure"]]
    assert failures == ["signingCredential.untrusted"]  # the local authority: valid, but nobody trusts it yet


def test_local_authority_root_as_trust_anchor_makes_the_signer_trusted(tmp_path):
    out = marked_file(tmp_path / "image.png")
    assert c2pa_store(out, trust_anchor=tmp_path / "authority" / ROOT_CERT)["validation_state"] == "Trusted"


def test_manifest_says_created_by_a_trained_model_with_generator_and_model(tmp_path):
    manifest = active(c2pa_store(marked_file(tmp_path / "image.png")))
    assert manifest["claim_generator_info"][0]["name"] == "flux2-split"
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    (created,) = actions
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["softwareAgent"]["name"] == "flux2-split"
    assert created["parameters"]["model"] == "FLUX.2-dev"


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_one_changed_pixel_byte_is_a_hash_mismatch(tmp_path, suffix):
    out = marked_file(tmp_path / f"image{suffix}")
    flip_one_pixel_byte(out)
    store = c2pa_store(out)
    assert store["validation_state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in [
        item["code"] for item in store["validation_results"]["activeManifest"]["failure"]
    ]


def test_edit_lists_its_reference_images_as_ingredients(tmp_path):
    references = (scene_file(tmp_path / "dog.png"), scene_file(tmp_path / "hat.jpg"))
    manifest = active(c2pa_store(marked_file(tmp_path / "edit.png", references=references)))
    ingredients = manifest["ingredients"]
    # Named by their place, not their file names (often a prompt or a person's name), unless prompts are shared.
    titles = [(item["title"], item["relationship"]) for item in ingredients]
    assert titles == [("reference-0.png", "inputTo"), ("reference-1.jpg", "inputTo")]
    assert [item["format"] for item in ingredients] == ["image/png", "image/jpeg"]


def test_file_names_reach_the_manifest_only_with_prompts(tmp_path):
    references = (scene_file(tmp_path / "alice-at-home.png"),)
    options = MarkingOptions(include_prompt=True, authority_folder=tmp_path / "authority")
    manifest = active(c2pa_store(marked_file(tmp_path / "edit.png", references=references, options=options)))
    assert (manifest["title"], manifest["ingredients"][0]["title"]) == ("edit.png", "alice-at-home.png")
    private = active(c2pa_store(marked_file(tmp_path / "bob.png", references=references)))
    assert "alice" not in json.dumps(private) and private["title"] == "image.png"


def test_reference_whose_name_lies_about_its_type_is_recorded_by_its_bytes(tmp_path):
    renamed = scene_file(tmp_path / "ref.png").rename(tmp_path / "ref.jpg")  # PNG bytes under a .jpg name
    (ingredient,) = active(c2pa_store(marked_file(tmp_path / "edit.png", references=(renamed,))))["ingredients"]
    assert ingredient["format"] == "image/png"


def test_local_authority_names_neither_the_user_nor_the_host(tmp_path):
    import getpass
    import socket

    from cryptography import x509

    chain = x509.load_pem_x509_certificates(local_authority(tmp_path / "c2pa").chain_pem)
    names = " ".join(cert.subject.rfc4514_string() + cert.issuer.rfc4514_string() for cert in chain)
    assert f"{getpass.getuser()}@" not in names and socket.gethostname() not in names


def test_a_reference_gone_before_marking_is_recorded_from_the_pixels_the_model_saw(tmp_path):
    from PIL import Image

    from diffusion_client.provenance.marking import ImageRecord

    reference = scene_file(tmp_path / "gone.png")
    with Image.open(reference) as image:
        decoded = image.convert("RGB")
    reference.unlink()
    marker = Marker.start(MarkingOptions(authority_folder=tmp_path / "authority"))
    record = ImageRecord("m", {"prompt": "p"}, "p", references=(reference,), decoded_references=(decoded,))
    out = tmp_path / "edit.png"
    out.write_bytes(marker.mark(Image.new("RGB", (64, 64)), out, record).data)
    (ingredient,) = active(c2pa_store(out))["ingredients"]
    assert (ingredient["title"], ingredient["format"]) == ("reference-0.png", "image/png")


def test_prompt_stays_out_of_the_manifest_unless_asked(tmp_path):
    prompt = "a secret project codename zebra-umbrella"
    private = c2pa_store(marked_file(tmp_path / "private.png", prompt=prompt))
    assert "zebra-umbrella" not in json.dumps(private)
    shared = c2pa_store(
        marked_file(
            tmp_path / "shared.png",
            prompt=prompt,
            options=MarkingOptions(include_prompt=True, authority_folder=tmp_path / "authority"),
        )
    )
    generation = next(a for a in active(shared)["assertions"] if a["label"] == "org.flux2-split.generation")
    assert generation["data"]["prompt"] == prompt


def test_local_authority_is_made_once_and_reused_with_its_key_private(tmp_path):
    folder = tmp_path / "c2pa"
    first = local_authority(folder)
    second = local_authority(folder)
    assert (first.chain_pem, first.key_pem) == (second.chain_pem, second.key_pem)
    assert first.created and not second.created  # only the call that made it says it did
    assert stat.S_IMODE((folder / SIGNER_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(path.name for path in folder.iterdir()) == sorted([ROOT_CERT, SIGNER_CHAIN, SIGNER_KEY])


def test_local_authority_made_under_umask_000_keeps_private_modes(tmp_path):
    config = tmp_path / "config"  # missing: made too, 0700 as XDG asks
    make = "import os; os.umask(0); from diffusion_client.provenance import authority; authority.local_authority()"
    env = {**os.environ, "XDG_CONFIG_HOME": str(config)}
    subprocess.run([sys.executable, "-c", make], env=env, check=True, timeout=120)
    folder = config / "flux2-split" / "c2pa"
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in (config, folder.parent, folder, *folder.iterdir())}
    assert modes == {
        config: 0o700,
        folder.parent: 0o700,
        folder: 0o700,
        folder / ROOT_CERT: 0o644,
        folder / SIGNER_CHAIN: 0o644,
        folder / SIGNER_KEY: 0o600,
    }


def test_local_authority_key_others_can_read_is_refused_saying_chmod_600(tmp_path):
    folder = tmp_path / "c2pa"
    local_authority(folder)
    (folder / SIGNER_KEY).chmod(0o644)
    with pytest.raises(InputError, match=f"mode 0644.*; chmod 600 {folder / SIGNER_KEY}$"):
        local_authority(folder)


def test_own_key_others_can_read_gets_one_note_for_the_end_of_the_run(tmp_path):
    local_authority(tmp_path / "team")
    key = tmp_path / "team" / SIGNER_KEY
    options = MarkingOptions(cert=tmp_path / "team" / SIGNER_CHAIN, key=key)
    assert Marker.start(options).success_notes() == []
    key.chmod(0o640)
    [note] = Marker.start(options).success_notes()
    assert note == f"--c2pa-key {key} can be read by other users of this machine, who could sign as you; chmod 600 it"


def test_processes_starting_together_share_one_local_authority(tmp_path):
    folder = tmp_path / "c2pa"
    made: list[tuple[bytes, bool]] = []

    def start() -> None:
        credentials = local_authority(folder)
        made.append((credentials.chain_pem, credentials.created))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 6 and len({chain for chain, _ in made}) == 1
    assert [created for _, created in made].count(True) == 1  # one made it; the others found it
    assert [path.name for path in tmp_path.iterdir()] == ["c2pa"]  # no staging folder left behind


def test_damaged_local_authority_is_one_line_naming_the_folder(tmp_path):
    folder = tmp_path / "c2pa"
    local_authority(folder)
    (folder / SIGNER_KEY).write_text("not a key")
    with pytest.raises(InputError, match=r"local signing authority in .*c2pa.* remove the folder"):
        local_authority(folder)


def test_key_that_does_not_match_the_certificate_is_refused(tmp_path):
    local_authority(tmp_path / "a")
    local_authority(tmp_path / "b")
    options = MarkingOptions(cert=tmp_path / "a" / SIGNER_CHAIN, key=tmp_path / "b" / SIGNER_KEY)
    with pytest.raises(InputError, match="the key does not match the certificate"):
        Marker.start(options)


def test_certificate_c2pa_refuses_fails_at_start(tmp_path):
    from tests.support.certs import make_certificates

    tls = make_certificates(tmp_path)  # a TLS server certificate: the wrong extended key usage for C2PA
    with pytest.raises(InputError, match="cannot sign a C2PA manifest with --c2pa-cert"):
        Marker.start(MarkingOptions(cert=tls.server_cert, key=tls.server_key))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(cert="c.pem"), "together"),
        (dict(c2pa=False, cert="c.pem", key="k.pem"), "--no-c2pa"),
        (dict(c2pa=False, include_prompt=True), "--no-c2pa"),
    ],
)
def test_contradicting_marking_options_are_refused(options, message):
    from pathlib import Path

    converted = {key: Path(value) if key in ("cert", "key") else value for key, value in options.items()}
    with pytest.raises(InputError, match=message):
        MarkingOptions(**converted)
