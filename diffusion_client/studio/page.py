"""The page: Gradio Blocks over a `Studio`. Handlers only read the form, call the studio and show the outcome;
every failure is one line in the status box (plain text: names from files or uploads are never rendered as
HTML or Markdown), never a traceback.

Generate hands the job to the studio's queue, which runs one at a time and limits how many each page, user and
everyone may have waiting; the handler shows the job's place in that queue, then its steps on the progress bar.
Cancel, or closing the page, cancels that session's jobs (between steps, or before they start). Each session
keeps its own gallery, shown through copies only that browser (or user) may fetch (`shelf.py`).
"""

import asyncio
from pathlib import Path
from typing import Any

import gradio as gr

from diffusion_client.errors import InputError, printable_line
from diffusion_client.generation.pipeline import ModelKind
from diffusion_client.studio.engine import MESSAGE_LIMIT, Cancelled, QueueFull, Studio, StudioImage, page_message
from diffusion_client.studio.form import MAX_PAGE_STEPS, MAX_REFERENCES, PageRequest, read_form
from diffusion_client.studio.loras import chosen_loras, lora_rows
from diffusion_client.studio.shelf import Shelf
from diffusion_client.studio.visitors import Caller, caller_of_event

SIZE_PRESETS = {
    "1024 × 1024": (1024, 1024),
    "1360 × 768 (16:9)": (1360, 768),
    "768 × 1360 (9:16)": (768, 1360),
    "1024 × 768 (4:3)": (1024, 768),
    "768 × 1024 (3:4)": (768, 1024),
    "512 × 512": (512, 512),
}
CUSTOM_SIZE = "custom"
POLL_S = 0.1  # how often the progress bar is brought up to date while an image denoises
# Images a session's gallery shows: Gradio reads and hashes every one again on each Generate. The files stay in
# --out-dir regardless.
HISTORY_LIMIT = 24


def failure(message: str) -> str:
    return f"Error: {message}"


def session_of(request: gr.Request) -> str:
    """The page session a request came from; closing that page ends it."""
    return request.session_hash or ""


def preset_for(width: int, height: int) -> str:
    return next((name for name, size in SIZE_PRESETS.items() if size == (width, height)), CUSTOM_SIZE)


def gallery_items(history: list[StudioImage], shelf: Shelf, caller: Caller) -> list[tuple[str, str]]:
    return [(str(shelf.serve(item.path, caller)), f"seed {item.request.seed}") for item in history]


def build_page(studio: Studio, shelf: Shelf, kind: ModelKind, *, title: str, lora_dir: Path | None) -> gr.Blocks:
    """The whole page; launching it is the caller's business."""
    # Uploads and the copies Gradio serves pile up in its cache on a page that runs for weeks: every 30 minutes,
    # files older than an hour go (the marked images stay in --out-dir).
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(1800, 3600)) as page:
        history = gr.State([])  # this session's StudioImages, newest first
        selected = gr.State(0)  # which of them the details show
        gr.Markdown(f"# {title}")
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                references = gr.File(
                    label=f"Reference images for an edit (up to {MAX_REFERENCES}; drag them in)",
                    file_count="multiple",
                    file_types=["image"],
                    elem_id="references",
                )
                with gr.Row():
                    upsample = gr.Checkbox(label="Upsample the prompt on the encoder server", elem_id="upsample")
                    rewrite_button = gr.Button("Rewrite now", size="sm", elem_id="rewrite-button")
                rewrite = gr.Textbox(
                    label="Rewritten prompt (used when upsampling is on; edit it before generating)",
                    lines=3,
                    elem_id="rewrite",
                )
                with gr.Row():
                    # No `precision`: Gradio would round 17.6 to 18 unseen; the form says what is wrong instead.
                    seed = gr.Number(label="Seed", value=0, minimum=0, elem_id="seed")
                    random_seed = gr.Checkbox(label="Random seed", value=False, elem_id="random-seed")
                with gr.Row():
                    steps = gr.Slider(1, MAX_PAGE_STEPS, value=kind.steps, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Number(label="Guidance", value=kind.guidance, elem_id="guidance")
                with gr.Row():
                    size = gr.Dropdown(
                        [*SIZE_PRESETS, CUSTOM_SIZE], value="1024 × 1024", label="Size", elem_id="size-preset"
                    )
                    width = gr.Number(label="Width", value=1024, step=16, elem_id="width")
                    height = gr.Number(label="Height", value=1024, step=16, elem_id="height")
                loras = gr.Dataframe(
                    lora_rows(lora_dir),
                    headers=["LoRA", "scale"],
                    datatype=["str", "number"],
                    column_count=2,
                    static_columns=[0],  # names come from the folder; only the scale is typed in
                    label="LoRAs from --lora-dir (scale 0 = off)",
                    visible=lora_dir is not None,
                    elem_id="loras",
                )
                refresh_loras = gr.Button("Refresh LoRAs", size="sm", visible=lora_dir is not None)
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
                status = gr.Textbox(label="Status", interactive=False, max_lines=6, elem_id="status")
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="This session's images", columns=3, elem_id="gallery")
                details = gr.JSON(label="Settings of the selected image", elem_id="details")
                with gr.Row():
                    reuse = gr.Button("Reuse these settings", elem_id="reuse")
                download = gr.File(label="Download (the marked file)", interactive=False, elem_id="download")

        form = [prompt, seed, random_seed, steps, guidance, width, height, references, loras, upsample, rewrite]

        def read(values: list[Any]) -> PageRequest:
            text, seed_, random_, steps_, guidance_, width_, height_, references_, loras_, upsample_, rewrite_ = values
            return read_form(
                prompt=text,
                seed=seed_,
                random_seed=random_,
                steps=steps_,
                guidance=guidance_,
                width=width_,
                height=height_,
                references=references_,
                loras=chosen_loras(loras_, lora_dir),
                upsample=upsample_,
                rewrite=rewrite_,
            )

        async def generate(
            text: Any,
            seed_: Any,
            random_: Any,
            steps_: Any,
            guidance_: Any,
            width_: Any,
            height_: Any,
            references_: Any,
            loras_: Any,
            upsample_: Any,
            rewrite_: Any,
            past: list[StudioImage],
            request: gr.Request,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio finds the tracker by this default)
        ) -> dict[Any, Any]:
            fields = [
                text,
                seed_,
                random_,
                steps_,
                guidance_,
                width_,
                height_,
                references_,
                loras_,
                upsample_,
                rewrite_,
            ]
            try:
                page_request = read(fields)
            except InputError as error:
                return {status: failure(page_message(error))}
            caller = caller_of_event(request)
            try:
                job = studio.submit(page_request, owner=session_of(request), account=caller.account)
            except QueueFull as error:
                return {status: failure(page_message(error))}
            try:
                while not job.future.done():
                    if job.started:
                        progress((job.steps_done, page_request.steps), desc="denoising", unit="steps")
                    else:
                        progress(0.0, desc=f"in the queue: {studio.ahead_of(job)} ahead")
                    await asyncio.sleep(POLL_S)
            except asyncio.CancelledError:  # Cancel pressed: Gradio cancels this task; the job stops between steps
                job.cancel()
                raise
            try:
                image = job.future.result()
            except Cancelled:  # Cancel pressed (its handler says so too) or the session's jobs cancelled
                return {status: "Cancelled."}
            except Exception as error:
                return {status: failure(studio.message(error, page_request))}
            past = [image, *past][:HISTORY_LIMIT]
            notes = "".join(f"\nNote: {printable_line(note, MESSAGE_LIMIT)}" for note in image.notes)
            return {
                status: f"Seed {image.request.seed}: wrote {image.path.name} in {image.seconds:.1f} s{notes}",
                history: past,
                selected: 0,
                gallery: gr.Gallery(value=gallery_items(past, shelf, caller), selected_index=0),
                details: image.settings(),
                download: str(shelf.serve(image.path, caller)),
                seed: image.request.seed,
                rewrite: image.upsampled_prompt or "",
            }

        generating = generate_button.click(
            generate,
            inputs=[*form, history],
            outputs=[status, history, selected, gallery, details, download, seed, rewrite],
            concurrency_limit=None,  # handlers only wait: the studio queues the jobs, one at a time on the GPU
        )

        def cancel(request: gr.Request) -> str:
            studio.cancel_owner(session_of(request))
            return "Cancelled."

        cancel_button.click(cancel, outputs=status, cancels=[generating], queue=False)

        def rewrite_now(*values: Any) -> dict[Any, Any]:
            try:
                page_request = read([*values[:-2], True, None])
            except InputError as error:
                return {status: failure(page_message(error))}
            try:
                text = studio.rewrite(page_request)
            except Exception as error:
                return {status: failure(studio.message(error, page_request))}
            return {
                rewrite: text,
                upsample: True,
                seed: page_request.seed,  # a random seed is drawn once, here, and kept for the image
                random_seed: False,
                status: f"Rewritten by the encoder server with seed {page_request.seed}; edit it or Generate.",
            }

        rewrite_button.click(
            rewrite_now,
            inputs=form,
            outputs=[rewrite, upsample, seed, random_seed, status],
            concurrency_limit=4,
            concurrency_id="encoder",
        )
        # A rewrite is of the prompt, seed and references it was made from: changing one drops it (in the browser,
        # no round trip), so Generate asks for a new one.
        prompt.input(None, js="() => ''", outputs=rewrite)
        seed.input(None, js="() => ''", outputs=rewrite)
        random_seed.input(None, js="() => ''", outputs=rewrite)
        references.change(None, js="() => ''", outputs=rewrite)

        def size_chosen(name: str) -> tuple[Any, Any]:
            if name not in SIZE_PRESETS:
                return gr.update(), gr.update()
            width_, height_ = SIZE_PRESETS[name]
            return width_, height_

        size.input(size_chosen, inputs=size, outputs=[width, height], queue=False)
        for side in (width, height):
            side.input(lambda w, h: preset_for(w, h), inputs=[width, height], outputs=size, queue=False)
        refresh_loras.click(lambda: lora_rows(lora_dir), outputs=loras, queue=False)

        def show(past: list[StudioImage], event: gr.SelectData, request: gr.Request) -> tuple[Any, ...]:
            index = event.index if isinstance(event.index, int) and 0 <= event.index < len(past) else 0
            if not past:
                return 0, None, None
            return index, past[index].settings(), str(shelf.serve(past[index].path, caller_of_event(request)))

        gallery.select(show, inputs=history, outputs=[selected, details, download], queue=False)

        def reuse_settings(past: list[StudioImage], index: int) -> tuple[Any, ...]:
            if not past or not 0 <= index < len(past):
                return (gr.update(),) * 10 + ("Nothing to reuse yet: generate an image first.",)
            request = past[index].request
            return (
                request.prompt,
                request.seed,
                False,
                request.steps,
                request.guidance,
                request.width,
                request.height,
                preset_for(request.width, request.height),
                request.upsample,
                past[index].upsampled_prompt or "",
                f"Settings of seed {request.seed} are back in the form; reference images and LoRAs stay as set.",
            )

        reuse.click(
            reuse_settings,
            inputs=[history, selected],
            outputs=[prompt, seed, random_seed, steps, guidance, width, height, size, upsample, rewrite, status],
            queue=False,
        )

        def closed(request: gr.Request) -> None:
            if cancelled := studio.cancel_owner(session_of(request), why="its page closed"):
                studio.log(f"a page closed: its {cancelled} job(s) cancelled")

        page.unload(closed)
    return page
