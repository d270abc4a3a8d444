#!/usr/bin/env bash
# The main job end to end: encoder server in the background, wait for SERVING, generate over gRPC, stop.
# Called by `make demo` with BIN (the venv's bin), PYTHON, MODEL (a snapshot) and OUT (output folder); with
# KLEIN_MODEL (a FLUX.2 [klein] snapshot) the same server serves both and a klein image is made too.
set -euo pipefail
BIN=${BIN:-.venv/bin}
PYTHON=${PYTHON:-$BIN/python}
MODEL=${MODEL:-.cache/tiny-flux2}
KLEIN_MODEL=${KLEIN_MODEL:-}
OUT=${OUT:-out}
PROMPT=${PROMPT:-"a red fox standing in fresh snow at golden hour, watercolor"}
GENERATE_ARGS=${GENERATE_ARGS:---height 256 --width 256 --steps 8 --seed 42}
KLEIN_ARGS=${KLEIN_ARGS:---height 256 --width 256 --seed 42}  # klein's own defaults: 4 steps, guidance 1
export HF_HUB_OFFLINE=1

mkdir -p "$OUT"
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MODELS=(--model "$MODEL")
if [ -n "$KLEIN_MODEL" ]; then MODELS+=(--model "$KLEIN_MODEL"); fi
"$BIN/flux2-encoder" serve "${MODELS[@]}" --host 127.0.0.1 --port "$PORT" >"$OUT/encoder.log" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT

echo "encoder server starting on 127.0.0.1:$PORT (log: $OUT/encoder.log)"
if ! "$BIN/flux2-encoder" health "127.0.0.1:$PORT" --wait 180; then
    echo "encoder server did not become SERVING; last log lines:" >&2
    tail -n 5 "$OUT/encoder.log" >&2
    exit 1
fi

# shellcheck disable=SC2086  # GENERATE_ARGS is a list of flags
"$BIN/flux2-generate" "$PROMPT" --encoder "127.0.0.1:$PORT" --model "$MODEL" --out "$OUT/demo.png" $GENERATE_ARGS
IMAGES=("$OUT/demo.png")
if [ -n "$KLEIN_MODEL" ]; then
    # The same server, its klein model picked by the snapshot's pipeline; klein's defaults: 4 steps, guidance 1.
    # shellcheck disable=SC2086
    "$BIN/flux2-generate" "$PROMPT" --encoder "127.0.0.1:$PORT" --model "$KLEIN_MODEL" --out "$OUT/demo-klein.png" \
        $KLEIN_ARGS
    IMAGES+=("$OUT/demo-klein.png")
fi

kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
trap - EXIT
echo "images written: ${IMAGES[*]}; provenance marks:"
"$BIN/flux2-verify" "${IMAGES[@]}"
echo "(the tiny model has random weights, so the image is noise; see README for a real FLUX.2-dev snapshot)"
