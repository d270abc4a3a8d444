"""`flux2-serve`: the generator box as a service in OpenAI's Images API (`/v1/images/generations`, `/edits`).

fields        a request body (JSON or multipart) checked into an `ImageRequest`; unknown fields refused
api_errors    every failure as OpenAI's `{"error": {...}}` with its HTTP status, mapped in one place
fair_queue    waiting requests, round robin between callers, capped per caller and overall
service       `ImageService`: one GPU worker over the CLI's own `ImageGenerator` (preflight, marks)
previews      partial images decoded from the latents between steps
image_files   `url` replies: unguessable names, served only to their caller, expiring
callers       bearer tokens (the encoder's tokens-file format), per-caller limits
metrics       Prometheus counters by caller name, never prompt text
app           the FastAPI app: routes, streaming (server-sent events), body limits
cli           the command: one box on uvicorn, or a Ray Serve deployment (`ray_deployment`)
"""
