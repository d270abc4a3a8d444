"""The body of a `/predict` request (Hugging Face's hosted-encoder format), parsed into an `EncodeRequest`: one JSON
object, each field once, numbers finite and short, nothing else; anything wrong is `InvalidRequestError` naming it."""

from __future__ import annotations

import json
import math
from typing import Any

from encoder_server.errors import InvalidRequestError
from encoder_server.model.request import EncodeRequest

FIELDS = ("prompt", "max_sequence_length", "hidden_state_layers")
MAX_NUMBER_DIGITS = 20


def _json_kind(value: Any) -> str:
    kinds = {str: "a string", list: "an array", dict: "an object", bool: "true or false", type(None): "null"}
    return kinds.get(type(value), "a number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise InvalidRequestError("the JSON body repeats a field; send each field once")
    return document


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise InvalidRequestError(f"the JSON body holds a number of {len(text)} digits; send numbers that fit 64 bits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequestError(
            f"the JSON body holds the number {text[:40]}, too large for a float; send finite numbers"
        )
    return value


def _no_constant(name: str) -> None:
    raise InvalidRequestError(f"the JSON body holds {name}, which JSON does not allow; send finite numbers")


def _integer(document: dict[str, Any], name: str) -> int | None:
    value = document.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidRequestError(f'"{name}" must be an integer, not {_json_kind(value)}')
    return value


def parse_predict_body(body: bytes) -> EncodeRequest:
    """The `EncodeRequest` a /predict body asks for; raises InvalidRequestError saying what to fix.

    Limits (prompt count and length, layers, length) are checked by the engine, as for gRPC.
    """
    try:
        document = json.loads(
            body,
            object_pairs_hook=_unique_keys,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:120]
        raise InvalidRequestError(f'the body is not valid JSON ({reason}); send {{"prompt": "a cat"}}') from None
    if not isinstance(document, dict):
        raise InvalidRequestError(
            f'the body must be a JSON object such as {{"prompt": "a cat"}}, not {_json_kind(document)}'
        )
    unknown = [name for name in document if name not in FIELDS]
    if unknown:
        shown = ", ".join(json.dumps(name[:40]) for name in unknown[:3])
        raise InvalidRequestError(f"unknown field {shown}; /predict accepts {', '.join(map(json.dumps, FIELDS))}")
    if "prompt" not in document:
        raise InvalidRequestError(
            'the body has no "prompt"; send {"prompt": "a cat"} or {"prompt": ["a cat", "a dog"]}'
        )
    prompt = document["prompt"]
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list):
        raise InvalidRequestError(f'"prompt" must be a string or an array of strings, not {_json_kind(prompt)}')
    for index, item in enumerate(prompts):
        if not isinstance(item, str):
            raise InvalidRequestError(f'"prompt"[{index}] must be a string, not {_json_kind(item)}')
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(
                f"prompt {index} holds a lone surrogate escape (such as \\ud800); send valid Unicode text"
            ) from None
    layers = document.get("hidden_state_layers")
    if layers is not None and not (
        isinstance(layers, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
    ):
        raise InvalidRequestError('"hidden_state_layers" must be an array of integers, such as [10, 20, 30]')
    return EncodeRequest.with_defaults(prompts, _integer(document, "max_sequence_length"), layers or ())
