"""The dynamic batcher as a plain object: grouping, pipelining and failure isolation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from encoder_server.config import BatchingConfig
from encoder_server.errors import NotReadyError
from encoder_server.model.request import EncodeRequest
from encoder_server.serving.batcher import DynamicBatcher


def _request(*prompts: str, length: int = 512) -> EncodeRequest:
    return EncodeRequest(prompts=prompts, max_sequence_length=length)


def test_next_forward_pass_starts_while_previous_results_are_being_finished():
    finishing_may_end = threading.Event()
    passes: list[list[str]] = []

    def run_batch(requests: Sequence[EncodeRequest]) -> list[str]:
        passes.append([prompt for request in requests for prompt in request.prompts])
        return [request.prompts[0] for request in requests]

    def finish(prompt: str) -> str:
        finishing_may_end.wait(10)
        return prompt.upper()

    async def scenario() -> list[str]:
        batcher = DynamicBatcher(run_batch, finish, BatchingConfig(max_batch_size=1, batch_wait_ms=0))
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(_request("a")))
        second = asyncio.ensure_future(batcher.submit(_request("b")))
        for _ in range(500):  # both passes ran although neither result has been finished yet
            if len(passes) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(passes) == 2 and not first.done()
        finishing_may_end.set()
        results = list(await asyncio.gather(first, second))
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == ["A", "B"]


def test_failed_forward_pass_fails_only_its_own_requests():
    def run_batch(requests: Sequence[EncodeRequest]) -> list[str]:
        if any(prompt == "boom" for request in requests for prompt in request.prompts):
            raise RuntimeError("CUDA out of memory")
        return [request.prompts[0] for request in requests]

    async def scenario() -> tuple[BaseException | str, ...]:
        batcher = DynamicBatcher(run_batch, str.upper, BatchingConfig(max_batch_size=1, batch_wait_ms=0))
        batcher.start()
        outcomes = await asyncio.gather(
            batcher.submit(_request("boom")), batcher.submit(_request("fine")), return_exceptions=True
        )
        await batcher.close()
        return tuple(outcomes)

    failed, succeeded = asyncio.run(scenario())
    assert isinstance(failed, RuntimeError)
    assert succeeded == "FINE"


def test_requests_of_different_lengths_are_never_batched_together():
    passes: list[set[int]] = []

    def run_batch(requests: Sequence[EncodeRequest]) -> list[int]:
        passes.append({request.max_sequence_length for request in requests})
        return [request.max_sequence_length for request in requests]

    async def scenario() -> list[int]:
        batcher = DynamicBatcher(run_batch, lambda length: length, BatchingConfig(max_batch_size=8, batch_wait_ms=50))
        batcher.start()
        lengths = [512, 77, 512, 77, 512]
        results = await asyncio.gather(*(batcher.submit(_request("p", length=n)) for n in lengths))
        await batcher.close()
        return list(results)

    assert asyncio.run(scenario()) == [512, 77, 512, 77, 512]
    assert all(len(lengths) == 1 for lengths in passes)
    assert len(passes) == 2


def test_cancelled_caller_is_dropped_before_its_pass():
    seen: list[str] = []

    def run_batch(requests: Sequence[EncodeRequest]) -> list[str]:
        seen.extend(prompt for request in requests for prompt in request.prompts)
        return [request.prompts[0] for request in requests]

    async def scenario() -> None:
        batcher = DynamicBatcher(run_batch, str, BatchingConfig(max_batch_size=8, batch_wait_ms=200))
        batcher.start()
        gone = asyncio.ensure_future(batcher.submit(_request("gone")))
        kept = asyncio.ensure_future(batcher.submit(_request("kept")))
        await asyncio.sleep(0.05)
        gone.cancel()
        assert await kept == "kept"
        assert batcher.queued_prompts == 0
        with pytest.raises(asyncio.CancelledError):
            await gone
        await batcher.close()

    asyncio.run(scenario())
    assert seen == ["kept"]


def test_close_finishes_the_pass_in_flight_and_fails_what_is_queued():
    in_pass = threading.Event()
    release = threading.Event()

    def run_batch(requests: Sequence[EncodeRequest]) -> list[str]:
        in_pass.set()
        release.wait(10)
        return [request.prompts[0] for request in requests]

    async def scenario() -> tuple[object, object]:
        batcher = DynamicBatcher(run_batch, str, BatchingConfig(max_batch_size=1, batch_wait_ms=0))
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(_request("running")))
        await asyncio.get_running_loop().run_in_executor(None, in_pass.wait, 10)
        queued = asyncio.ensure_future(batcher.submit(_request("queued")))
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.05)
        release.set()
        await closing
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        return outcomes[0], outcomes[1]

    running, queued = asyncio.run(scenario())
    assert running == "running"
    assert isinstance(queued, NotReadyError)


def test_caller_that_gives_up_frees_its_queue_space_at_once():
    async def scenario() -> int:
        config = BatchingConfig(max_batch_size=2, batch_wait_ms=5000, max_queued_prompts=2)
        batcher = DynamicBatcher(lambda requests: [r.prompts[0] for r in requests], str, config)
        batcher.start()
        gone = asyncio.ensure_future(batcher.submit(_request("a")))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        queued = batcher.queued_prompts
        done = await batcher.submit(_request("b", "c"))  # would be RESOURCE_EXHAUSTED if "a" still counted
        assert done == "b"
        await batcher.close()
        return queued

    assert asyncio.run(scenario()) == 0
