"""C2PA manifests through c2pa-python: signing an image file's final bytes, and reading a file's back.

A manifest says the image was created (`c2pa.created`) with digital source type `trainedAlgorithmicMedia`,
by which generator and version, from which model, and, for an edit, from which reference images (ingredients
with the relationship `inputTo`). The prompt goes in only when asked (`include_prompt`). Everything runs
offline: no timestamp authority, no OCSP, no remote manifests, no thumbnails (c2pa would otherwise embed a
1024-pixel thumbnail per image and per ingredient, megabytes each).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffusion_client.errors import InputError, printable_line
from diffusion_client.provenance.authority import SigningCredentials
from diffusion_client.provenance.iptc import TRAINED_ALGORITHMIC_MEDIA

GENERATOR = "flux2-split"
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
SHOWN_CHARS = 100  # of a name a file's manifest gives (generator, signer): what a line shows of it
GENERATION_ASSERTION = "org.flux2-split.generation"
OFFLINE_SETTINGS: dict[str, Any] = {
    "verify": {"ocsp_fetch": False, "remote_manifest_fetch": False},
    "core": {"allowed_network_hosts": []},  # no HTTP from c2pa at all
    "builder": {"thumbnail": {"enabled": False}, "auto_timestamp_assertion": {"enabled": False}},
}


@functools.cache  # asked for every image; the installed package does not change under a running process
def generator_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flux2-split")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


@dataclass(frozen=True)
class Ingredient:
    """A file an image was made from (a reference image of an edit), as its bytes."""

    title: str
    mime_type: str
    data: bytes


@dataclass(frozen=True)
class ManifestContent:
    """What a manifest states about one image."""

    title: str
    model: str
    settings: Mapping[str, Any]  # seed, steps, guidance, size, ...: never the prompt
    prompt: str | None = None  # only when the user asked for prompts in manifests
    ingredients: Sequence[Ingredient] = field(default_factory=tuple)


def definition(content: ManifestContent, mime_type: str) -> dict[str, Any]:
    """The manifest definition c2pa's `Builder` takes."""
    version = generator_version()
    parameters: dict[str, Any] = {"model": content.model}
    if content.ingredients:
        parameters["ingredientIds"] = [f"reference-{index}" for index in range(len(content.ingredients))]
    if content.prompt is not None:
        parameters["description"] = content.prompt
    generation = {**content.settings, "model": content.model}
    if content.prompt is not None:
        generation["prompt"] = content.prompt
    action = {
        "action": "c2pa.created",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": {"name": GENERATOR, "version": version},
        "parameters": parameters,
    }
    return {
        "claim_generator_info": [{"name": GENERATOR, "version": version}],
        "title": content.title,
        "format": mime_type,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [action]}},
            {"label": GENERATION_ASSERTION, "data": generation},
        ],
    }


class ManifestSigner:
    """Signs files with one set of credentials; one instance may serve several threads (a Builder each)."""

    def __init__(self, credentials: SigningCredentials) -> None:
        import c2pa

        self.credentials = credentials
        algorithm = getattr(c2pa.C2paSigningAlg, credentials.algorithm.upper())
        try:
            info = c2pa.C2paSignerInfo(algorithm, credentials.chain_pem, credentials.key_pem, None)
            self._signer = c2pa.Signer.from_info(info)
            self._context = c2pa.Context.from_dict(OFFLINE_SETTINGS)
        except c2pa.C2paError as error:
            raise InputError(f"{credentials.source}: c2pa refuses them: {error}") from None

    def sign(self, data: bytes, mime_type: str, content: ManifestContent) -> bytes:
        """`data` (a whole image file) with a signed manifest embedded."""
        import c2pa

        signed = io.BytesIO()
        try:
            with c2pa.Builder(definition(content, mime_type), self._context) as builder:
                for index, ingredient in enumerate(content.ingredients):
                    builder.add_ingredient(
                        {"title": ingredient.title, "relationship": "inputTo", "label": f"reference-{index}"},
                        ingredient.mime_type,
                        io.BytesIO(ingredient.data),
                    )
                builder.sign(self._signer, mime_type, io.BytesIO(data), signed)
        except c2pa.C2paError as error:
            raise InputError(f"cannot sign a C2PA manifest with {self.credentials.source}: {error}") from None
        return signed.getvalue()

    def check(self) -> None:
        """Sign a small image once, so credentials c2pa refuses (usage, chain, key) fail before any weights load."""
        from PIL import Image

        from diffusion_client.provenance.formats import PNG, encode_image

        self.sign(encode_image(Image.new("RGB", (16, 16)), PNG), PNG.mime_type, ManifestContent("check", "none", {}))


@dataclass(frozen=True)
class ManifestReading:
    """What a file's C2PA manifest store says, in the words `flux2-verify` prints."""

    state: str  # "trusted", "valid", "invalid", "absent" or "unreadable"
    failures: tuple[str, ...] = ()  # c2pa's failure codes, e.g. assertion.dataHash.mismatch
    claim_generator: str | None = None
    signer: str | None = None
    detail: str | None = None  # why it is unreadable
    source_types: tuple[str, ...] = ()  # the digital source types its actions state (a camera: digitalCapture)

    @property
    def says_ai(self) -> bool:
        """A manifest that validates and states that a trained model made (or took part in making) the image."""
        return self.state in ("trusted", "valid") and any(
            kind.rsplit("/", 1)[-1] in AI_SOURCE_TYPES for kind in self.source_types
        )

    def describe(self) -> str:
        generator = f" ({self.claim_generator})" if self.claim_generator else ""
        if self.state in ("trusted", "valid") and not self.says_ai:
            kinds = ", ".join(kind.rsplit("/", 1)[-1] for kind in self.source_types) or "none stated"
            generator += f", source {kinds}: not an AI mark"
        if self.state == "trusted":
            return f"C2PA valid, trusted signer{generator}"
        if self.state == "valid":
            untrusted = "signingCredential.untrusted" in self.failures
            return f"C2PA valid{' but untrusted signer' if untrusted else ''}{generator}"
        if self.state == "invalid":
            # what broke first, then (if so) that nobody vouches for the signer either
            ordered = sorted(self.failures, key=lambda code: code == "signingCredential.untrusted")
            reasons = ", ".join(_plain(code) for code in ordered) or "no reason given"
            return f"C2PA invalid: {reasons}{generator}"
        if self.state == "unreadable":
            return f"C2PA unreadable: {self.detail}"
        return "C2PA absent"

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failures": list(self.failures),
            "claim_generator": self.claim_generator,
            "signer": self.signer,
            "detail": self.detail,
            "digital_source_types": list(self.source_types),
            "says_ai": self.says_ai,
        }


def _plain(code: str) -> str:
    plain = {
        "assertion.dataHash.mismatch": "hash mismatch",
        "claimSignature.mismatch": "signature mismatch",
        "signingCredential.untrusted": "untrusted signer",
    }
    return plain.get(code, code)


def reading_context(trust_anchors: bytes | None = None) -> Any:
    """c2pa's offline context for reading, trusting `trust_anchors` (PEM roots); `InputError` if c2pa refuses them."""
    import c2pa

    settings = json.loads(json.dumps(OFFLINE_SETTINGS))
    if trust_anchors:
        settings["trust"] = {"user_anchors": trust_anchors.decode("utf-8", errors="replace")}
    try:
        return c2pa.Context.from_dict(settings)
    except c2pa.C2paError as error:
        raise InputError(f"the trust anchors are not PEM certificates c2pa can read: {error}") from None


def read_manifest(data: bytes, mime_type: str, context: Any = None) -> ManifestReading:
    """Validate the manifest `data` carries, in `context` (`reading_context`: which signers are trusted)."""
    import c2pa

    context = context if context is not None else reading_context()
    try:
        with c2pa.Reader(mime_type, io.BytesIO(data), context=context) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError as error:
        if type(error).__name__ == "_C2paManifestNotFound" or "ManifestNotFound" in str(error):
            return ManifestReading("absent")
        return ManifestReading("unreadable", detail=str(error).splitlines()[0][:200] if str(error) else "")
    state = str(store.get("validation_state", "")).lower() or "invalid"
    results = store.get("validation_results", {}).get("activeManifest", {})
    failures = tuple(str(item.get("code")) for item in results.get("failure", []))
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    generators = active.get("claim_generator_info") or [{}]
    claim = " ".join(str(generators[0].get(key, "")) for key in ("name", "version")).strip() or None
    signature = active.get("signature_info", {})
    signer = signature.get("common_name") or signature.get("issuer")
    known = state if state in ("trusted", "valid", "invalid") else "invalid"
    return ManifestReading(known, failures, _shown(claim), _shown(signer), source_types=_source_types(active))


def _shown(text: object) -> str | None:
    """A name from a file, made one printable line and capped: it is the file's author's text, not ours."""
    return printable_line(text, SHOWN_CHARS) if text else None


def _source_types(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The digital source types of the manifest's actions (`c2pa.actions` or `.v2`)."""
    kinds = []
    for assertion in manifest.get("assertions", []) or []:
        if isinstance(assertion, dict) and str(assertion.get("label", "")).startswith("c2pa.actions"):
            data = assertion.get("data")
            actions = data.get("actions", []) if isinstance(data, dict) else []
            for action in actions if isinstance(actions, list) else []:
                if isinstance(action, dict) and isinstance(action.get("digitalSourceType"), str):
                    kinds.append(printable_line(action["digitalSourceType"], SHOWN_CHARS))
    return tuple(kinds[:8])
