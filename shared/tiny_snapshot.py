"""Build a tiny, offline FLUX.2-shaped snapshot in diffusers layout.

The snapshot has random weights but the real structure: a `Mistral3ForConditionalGeneration` text
encoder with enough decoder layers for the default hidden-state layers (10, 20, 30), a `PixtralProcessor`
as `tokenizer/` (as FLUX.2-dev ships it) over the real Tekken tokenizer shipped in `mistral-common`
converted by transformers, Mistral Small 3.1's chat template,
and a small `Flux2Transformer2DModel` whose `joint_attention_dim` is 3 x the encoder's hidden size.
`Flux2Pipeline.from_pretrained` loads it, so tests and the demo exercise the real loading code.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mistral_common
import torch

TEKKEN_FILE = "tekken_240911.json"
TINY_STOP_EVERY = 64
PIXTRAL_IMAGE_SIZE = 1540  # Mistral Small 3.1's vision tower and processor: images up to 1540 px a side

# Mistral Small 3.1's template form: `<s>[SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]…[/INST]`, with content given
# either as a string or as a list of typed blocks (the form diffusers' `format_input` produces).
MISTRAL_SMALL_3_1_CHAT_TEMPLATE = """\
{%- set default_system_message = "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI." %}
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- if messages[0]['content'] is string %}
        {%- set system_message = messages[0]['content'] %}
    {%- else %}
        {%- set system_message = messages[0]['content'][0]['text'] %}
    {%- endif %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = default_system_message %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- if message['content'] is string %}
            {{- '[INST]' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST]' }}
            {%- for block in message['content'] %}
                {%- if block['type'] == 'text' %}
                    {{- block['text'] }}
                {%- elif block['type'] in ['image', 'image_url'] %}
                    {{- '[IMG]' }}
                {%- else %}
                    {{- raise_exception('Only text and image blocks are supported in message content!') }}
                {%- endif %}
            {%- endfor %}
            {{- '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'system' %}
        {{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}
    {%- elif message['role'] == 'assistant' %}
        {%- if message['content'] is string %}
            {{- message['content'] + eos_token }}
        {%- else %}
            {{- message['content'][0]['text'] + eos_token }}
        {%- endif %}
    {%- else %}
        {{- raise_exception('Only user, system and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}"""


@dataclass(frozen=True)
class TinySnapshotShape:
    """Sizes of the tiny snapshot; the defaults keep a CPU forward pass in milliseconds.

    Every linear layer's widths are multiples of 64, as in the real models: bitsandbytes' 4-bit CPU path on
    AVX512-BF16 packs weights in 32-row tiles of 64-weight blocks and fails on narrower layers.
    """

    text_hidden_size: int = 64
    text_num_layers: int = 34
    text_num_heads: int = 4
    text_num_kv_heads: int = 2
    text_head_dim: int = 32  # q is 4 x 32 = 128 wide, k and v 2 x 32 = 64 (Mistral's q is wider than hidden too)
    text_intermediate_size: int = 128
    vocab_size: int = 131072  # the Tekken vocabulary, so real token ids index real rows
    vision_hidden_size: int = 64
    vision_num_heads: int = 2  # Pixtral's head_dim is hidden / heads
    vision_intermediate_size: int = 128
    latent_channels: int = 16  # the DiT takes 4 x 16 = 64 channels (FLUX.2: 32 latent channels, 128 in)
    vae_block_out_channels: tuple[int, ...] = (8, 16, 32, 64)  # its mid-block attention is 64 wide
    dit_num_heads: int = 2
    dit_head_dim: int = 32  # rotary axes: four of head_dim / 4
    seed: int = 0


@contextlib.contextmanager
def built_on(device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """Modules constructed inside are made on `device` in `dtype`, with no float32 copy on the host to cast.

    A full-size model's float32 copy would not fit, and diffusers' `ModelMixin.to(dtype)` warns about modules to
    keep in float32 on every cast, even when there are none.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def tekken_path() -> Path:
    """The Tekken vocabulary file shipped inside the `mistral-common` package."""
    return Path(mistral_common.__file__).parent / "data" / TEKKEN_FILE


def build_tokenizer():  # type: ignore[no-untyped-def]
    """Convert the shipped Tekken vocabulary into a fast tokenizer with Mistral Small 3.1's template."""
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    return convert_tekken_tokenizer(str(tekken_path()), chat_template=MISTRAL_SMALL_3_1_CHAT_TEMPLATE)


def build_processor():  # type: ignore[no-untyped-def]
    """What FLUX.2-dev ships as `tokenizer/`: a `PixtralProcessor` over the Tekken tokenizer (needs torchvision)."""
    from transformers import PixtralImageProcessor, PixtralProcessor

    return PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": PIXTRAL_IMAGE_SIZE}, patch_size=14),
        tokenizer=build_tokenizer(),
        patch_size=14,
        spatial_merge_size=2,
        chat_template=MISTRAL_SMALL_3_1_CHAT_TEMPLATE,
    )


def build_text_encoder(shape: TinySnapshotShape):  # type: ignore[no-untyped-def]
    """A randomly initialised `Mistral3ForConditionalGeneration` in the real architecture."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": shape.vocab_size,
            "hidden_size": shape.text_hidden_size,
            "intermediate_size": shape.text_intermediate_size,
            "num_hidden_layers": shape.text_num_layers,
            "num_attention_heads": shape.text_num_heads,
            "num_key_value_heads": shape.text_num_kv_heads,
            "head_dim": shape.text_head_dim,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 11,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": shape.vision_hidden_size,
            "num_hidden_layers": 1,
            "num_attention_heads": shape.vision_num_heads,
            "head_dim": shape.vision_hidden_size // shape.vision_num_heads,
            "intermediate_size": shape.vision_intermediate_size,
            "image_size": PIXTRAL_IMAGE_SIZE,  # rotary positions for the largest image the processor makes
            "patch_size": 14,
            "num_channels": 3,
        },
        image_token_index=10,  # `[IMG]` in Tekken
        spatial_merge_size=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,  # Mistral Small 3.1 has a separate LM head
    )
    config.text_config.tie_word_embeddings = False
    with built_on("cpu"):
        model = Mistral3ForConditionalGeneration(config)
    # Random weights never sample `</s>`, so every upsample would run its full 512 tokens (20 s on a CPU): one
    # token in TINY_STOP_EVERY ends a generation instead, about 64 tokens in. Real snapshots stop at `</s>`.
    model.generation_config.eos_token_id = list(range(2, shape.vocab_size, TINY_STOP_EVERY))
    model.generation_config.pad_token_id = 11
    return model.eval()


def build_transformer(  # type: ignore[no-untyped-def]
    shape: TinySnapshotShape, joint_attention_dim: int, *, guidance_embeds: bool = True
):
    """A tiny `Flux2Transformer2DModel`; FLUX.2-dev embeds a guidance scale, [klein] has no guidance embedder."""
    from diffusers import Flux2Transformer2DModel

    with built_on("cpu"):
        return Flux2Transformer2DModel(
            patch_size=1,
            in_channels=shape.latent_channels * 4,  # latents are 2x2-patchified before the DiT
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=shape.dit_head_dim,
            num_attention_heads=shape.dit_num_heads,
            joint_attention_dim=joint_attention_dim,
            timestep_guidance_channels=256,
            axes_dims_rope=(shape.dit_head_dim // 4,) * 4,  # they must sum to the head dim
            guidance_embeds=guidance_embeds,
        )


def build_vae(shape: TinySnapshotShape):  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKLFlux2

    blocks = len(shape.vae_block_out_channels)
    with built_on("cpu"):
        return AutoencoderKLFlux2(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            block_out_channels=shape.vae_block_out_channels,
            layers_per_block=1,
            latent_channels=shape.latent_channels,
            norm_num_groups=4,
            sample_size=64,
        )


def build_scheduler():  # type: ignore[no-untyped-def]
    from diffusers import FlowMatchEulerDiscreteScheduler

    # FLUX.2-dev's scheduler settings: the pipeline passes an empirical `mu`, so shifting is dynamic.
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential"
    )


def build_tiny_snapshot(out_dir: str | os.PathLike[str], shape: TinySnapshotShape | None = None) -> Path:
    """Write the tiny snapshot to `out_dir` (replaced atomically) and return its path."""
    from diffusers import Flux2Pipeline

    shape = shape or TinySnapshotShape()
    out = Path(out_dir)
    torch.manual_seed(shape.seed)
    text_encoder = build_text_encoder(shape)
    torch.manual_seed(shape.seed + 1)
    transformer = build_transformer(shape, joint_attention_dim=3 * shape.text_hidden_size)
    torch.manual_seed(shape.seed + 2)
    vae = build_vae(shape)
    pipeline = Flux2Pipeline(
        scheduler=build_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_processor(),
        transformer=transformer,
    )
    with replaced_atomically(out) as staging:
        pipeline.save_pretrained(staging, safe_serialization=True)
    return out


@contextlib.contextmanager
def replaced_atomically(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; if the block succeeds, it replaces `out` by a rename.

    A reader never sees a half-written snapshot, and a failed build leaves the previous one in place.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-snapshot-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def snapshot_digest(snapshot_dir: str | os.PathLike[str]) -> str:
    """sha256 over every file's relative path and bytes; equal digests mean identical snapshots."""
    root = Path(snapshot_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
