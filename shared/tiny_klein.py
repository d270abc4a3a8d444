"""Build a tiny, offline FLUX.2 [klein] snapshot in the diffusers layout of black-forest-labs/FLUX.2-klein-4B.

Random weights in the real structure: a `Qwen3ForCausalLM` text encoder deep enough for [klein]'s hidden-state
layers (9, 18, 27), a `Qwen2TokenizerFast` over a small byte-level BPE that carries Qwen3's added tokens in their
real order and Qwen3's chat template, and the dev tiny snapshot's transformer (without a guidance embedder), VAE and
scheduler. `Flux2KleinPipeline.from_pretrained` loads it; `distilled` picks the step-distilled variant (no CFG) or
the base one (CFG against the embedding of "").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from shared.tiny_snapshot import (
    TinySnapshotShape,
    build_scheduler,
    build_transformer,
    build_vae,
    built_on,
    replaced_atomically,
)

# Widths as the dev tiny snapshot's (multiples of 64); 28 layers so that hidden_states[27] is a raw layer output,
# as in the real 36-layer Qwen3-4B, not the final-normed one transformers puts at hidden_states[-1].
# Its vision sizes and Tekken `vocab_size` are unused: the vocabulary is the tokenizer's, padded.
KLEIN_SHAPE = TinySnapshotShape(text_num_layers=28)

# Qwen3's added tokens in their real order (ids 151643-151668 in Qwen3), each with whether it is special.
# The tool and think tags are not special in Qwen3: decoding with skip_special_tokens keeps them.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# A few byte-level merges (Ġ is a space, Ċ a newline) so the chat markup and common words are single tokens.
TINY_MERGES: tuple[tuple[str, str], ...] = (
    ("Ġ", "a"),
    ("a", "t"),
    ("Ġ", "c"),
    ("Ġc", "at"),
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "d"),
    ("o", "g"),
    ("Ġd", "og"),
    ("Ċ", "Ċ"),
    ("s", "t"),
    ("a", "n"),
    ("e", "r"),
    ("u", "s"),
    ("us", "er"),
    ("s", "s"),
    ("a", "ss"),
    ("ass", "i"),
    ("assi", "st"),
    ("assist", "an"),
    ("assistan", "t"),
)

# Qwen3's original (hybrid-thinking) chat template, verbatim from Qwen/Qwen3-0.6B's first release: with
# enable_thinking=False it closes an empty think block after the generation prompt, which [klein] relies on.
# Not the Qwen3-*-2507 template, which always opens `<think>\n`.
QWEN3_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in the order of Qwen's first 256 ids.

    Printable bytes stand for themselves and come first ("!" is id 0); the rest map to chr(256 + n), in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + n) for n in range(len(others))]


def build_qwen3_tokenizer() -> Any:
    """A `Qwen2TokenizerFast` over 256 byte tokens and TINY_MERGES, with Qwen3's added tokens and chat template.

    Its settings are those of Qwen3-4B's tokenizer_config.json; the constructor supplies Qwen's pre-tokenizer
    regex, byte-level decoder and NFC normaliser itself.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    vocab = {token: i for i, token in enumerate(byte_level_alphabet())}
    for left, right in TINY_MERGES:
        vocab.setdefault(left + right, len(vocab))
    # No special tokens yet: the constructor would give eos and pad the first ids after the BPE vocabulary.
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab,
        merges=list(TINY_MERGES),
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        add_prefix_space=False,
        model_max_length=131072,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.add_tokens(
        [AddedToken(token, special=special, normalized=False) for token, special in QWEN3_ADDED_TOKENS]
    )
    specials = [token for token, special in QWEN3_ADDED_TOKENS if special and token != "<|endoftext|>"]
    tokenizer.add_special_tokens(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "additional_special_tokens": specials}
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def build_qwen3_text_encoder(shape: TinySnapshotShape, tokenizer: Any) -> Any:
    """A randomly initialised `Qwen3ForCausalLM` with Qwen3-4B's settings at `shape`'s sizes."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = Qwen3Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,  # padded to a multiple of 64, as Qwen3's 151669 tokens are to 151936
        hidden_size=shape.text_hidden_size,
        intermediate_size=shape.text_intermediate_size,
        num_hidden_layers=shape.text_num_layers,
        num_attention_heads=shape.text_num_heads,
        num_key_value_heads=shape.text_num_kv_heads,
        head_dim=shape.text_head_dim,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,  # Qwen3-4B (klein-4B's encoder) ties its LM head to the embeddings
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
    )
    with built_on("cpu"):
        model = Qwen3ForCausalLM(config)
    return model.eval()


def build_tiny_klein_snapshot(path: Path, *, distilled: bool = True) -> Path:
    """Write the tiny [klein] snapshot to `path` (replaced atomically, same bytes on every build) and return it."""
    from diffusers import Flux2KleinPipeline

    shape = KLEIN_SHAPE
    tokenizer = build_qwen3_tokenizer()
    # The dev snapshot's seeds, so the VAE (seed + 2) is byte-for-byte the dev snapshot's.
    torch.manual_seed(shape.seed)
    text_encoder = build_qwen3_text_encoder(shape, tokenizer)
    torch.manual_seed(shape.seed + 1)
    transformer = build_transformer(shape, joint_attention_dim=3 * shape.text_hidden_size, guidance_embeds=False)
    torch.manual_seed(shape.seed + 2)
    vae = build_vae(shape)
    pipeline = Flux2KleinPipeline(
        scheduler=build_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )
    with replaced_atomically(path) as staging:
        pipeline.save_pretrained(staging, safe_serialization=True)
        name_tokenizer_as_released(staging / "model_index.json")
    return path


def name_tokenizer_as_released(model_index: Path) -> None:
    """Name the tokenizer class `Qwen2TokenizerFast`, as FLUX.2-klein-4B's model_index.json does.

    In transformers 5 `Qwen2TokenizerFast` is `Qwen2Tokenizer`, so diffusers saves the latter name; both load.
    """
    index = json.loads(model_index.read_text())
    index["tokenizer"] = ["transformers", "Qwen2TokenizerFast"]
    model_index.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")  # diffusers' own format
