"""`flux2-batch`: a prompts file of any size over a Ray cluster, each GPU fed by the one shared encoder service.

| module | job |
| --- | --- |
| `cli.py` | the flags, and the driver: plan, check the encoder, start Ray, run, write the manifest, exit code |
| `plan.py` | prompts-file lines to numbered, named jobs, every bad line found before anything starts |
| `outputs.py` | the output folder: local (`atomic_files`) or any filesystem pyarrow opens from a URI |
| `worker.py` | the Ray actor: one pipeline and one `RemoteTextEncoder`, one job at a time |
| `runner.py` | Ray itself: connecting, sizing the pool, `map_batches` over it |
| `results.py` | one result per job, the `results.jsonl` manifest and the closing summary |

Only `runner.py` imports ray, and only once a run starts: without the `ray` extra, `--help` and flag errors still
answer, and a run says in one line what to install.
"""
