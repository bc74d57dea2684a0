"""Helper processes that run the shards of every batch (HYDRANT_COMPUTE_PROCESSES): the pool, the
exchange of shards and results through memory files, and the helper's main loop."""

from __future__ import annotations

import asyncio
import marshal
import os
import struct
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from app.config.changes import replaying_from_env
from app.config.spec import load_pipeline
from app.engine.shards import BatchWork, Shard, ShardEvent, ShardResult, Wants
from app.system.memory import collections_paused, settle_garbage_collector
from app.system.processes import die_with_parent

_FRAME = struct.Struct("!Q")  # a message on the pipes: the byte length of a file's contents


def encode_shard(shard: Shard) -> bytes:
    """``shard`` as bytes for a helper (``marshal`` of plain values; what a helper needs only)."""
    events = [
        (e.stream, e.decoded, e.source, e.offset, e.stage, e.key, e.carry, e.mark) for e in shard.events
    ]
    wants = {slot: whole for slot, (whole, _) in shard.wants.items()}  # the buckets were for reading
    return marshal.dumps((events, wants, shard.records, shard.lookups, shard.expired))


def decode_shard(payload: bytes) -> Shard:
    """The shard :func:`encode_shard` encoded (in a helper)."""
    events, wants, records, lookups, expired = marshal.loads(payload)  # noqa: S302 (from the worker that started us)
    return Shard(
        [ShardEvent(*event) for event in events],
        {slot: Wants(whole, set()) for slot, whole in wants.items()},
        records,
        lookups,
        expired=expired,
    )


def encode_result(result: ShardResult) -> bytes:
    """``result`` as bytes for the worker (``marshal``)."""
    return marshal.dumps((result.outcomes, result.changes, result.late, result.duplicates, result.unkeyed))


def decode_result(payload: bytes) -> ShardResult:
    """The result :func:`encode_result` encoded (in the worker)."""
    return ShardResult(*marshal.loads(payload))  # noqa: S302 (from our own helper)


def helper_main(pipeline_path: str, shard_fd: str, result_fd: str) -> None:
    """A helper (``python -m app.engine.helpers PIPELINE SHARD_FD RESULT_FD``): per size frame on stdin,
    run the shard in ``shard_fd``, write the result to ``result_fd``, answer its size; until stdin ends."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never between the frames
    requests = sys.stdin.buffer
    work = BatchWork(load_pipeline(pipeline_path), replaying=replaying_from_env())
    shards, results = int(shard_fd), int(result_fd)
    settle_garbage_collector()
    _send(answers, 0)
    while len(header := requests.read(_FRAME.size)) == _FRAME.size:
        (size,) = _FRAME.unpack(header)
        shard = decode_shard(_read(shards, size))
        with collections_paused():  # as in the worker's batches
            result = work.run(shard)
            _send(answers, _write(results, encode_result(result)))
            # Freed after the answer, while the worker sends the batch, not before it.
            del shard, result


def _send(out: Any, size: int) -> None:
    out.write(_FRAME.pack(size))
    out.flush()


def _write(fd: int, payload: bytes) -> int:
    """Write ``payload`` at the start of the file ``fd``, in place (the file keeps its size); its length."""
    done = 0
    view = memoryview(payload)
    while done < len(payload):
        done += os.pwrite(fd, view[done:], done)
    return len(payload)


def _read(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of the file ``fd``."""
    chunks = []
    done = 0
    while done < size:
        chunk = os.pread(fd, size - done, done)
        if not chunk:
            raise RuntimeError(f"exchange file: {done} bytes, {size} expected")
        chunks.append(chunk)
        done += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _memory_file(name: str) -> int:
    """A file in memory (``memfd``; elsewhere an unlinked temp file), passed to a helper by descriptor."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name)
    fd, path = tempfile.mkstemp(prefix=f"{name}-")  # elsewhere than Linux: an unlinked temp file
    os.unlink(path)
    return fd


class HelperPool:
    """``count`` helper processes, each running one shard of every batch; with helpers the worker's
    own shard 0 stays empty, with ``count`` 0 the worker runs every batch itself (docs/performance.md)."""

    def __init__(self, count: int, pipeline_path: Path) -> None:
        self.count = count
        self._pipeline_path = pipeline_path
        self._processes: list[subprocess.Popen[bytes]] = []
        self._streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._files: list[tuple[int, int]] = []  # per helper: its shard's and its result's file

    def start(self) -> None:
        """Start the missing processes (call before Faust starts, so they load the pipeline early)."""
        while len(self._processes) < self.count:
            files = _memory_file("hydrant-shard"), _memory_file("hydrant-result")
            self._files.append(files)
            self._processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "app.engine.helpers",
                        str(self._pipeline_path),
                        *map(str, files),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    pass_fds=files,
                    start_new_session=True,  # a terminal's Ctrl-C reaches the worker, which ends them
                    preexec_fn=die_with_parent(),  # and if the worker is killed, they end too
                )
            )

    async def connect(self) -> None:
        """Attach the helpers' pipes to the running event loop; wait until each has loaded the
        pipeline."""
        self.start()
        loop = asyncio.get_running_loop()
        for process in self._processes[len(self._streams) :]:
            assert process.stdin is not None and process.stdout is not None
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(partial(asyncio.StreamReaderProtocol, reader), process.stdout)
            pipe, flow = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, process.stdin)
            writer = asyncio.StreamWriter(pipe, flow, None, loop)
            try:
                await asyncio.wait_for(reader.readexactly(_FRAME.size), 120)
            except (asyncio.IncompleteReadError, TimeoutError):
                raise RuntimeError(f"helper process {process.pid} did not start") from None
            self._streams.append((reader, writer))

    def shard_for(self, n: int) -> int:
        """The shard of the batch's ``n``-th key (0: the worker's own, s > 0: helper s - 1)."""
        return n % self.count + 1 if self.count else 0

    async def run(self, s: int, shard: Shard) -> ShardResult:
        """``shard`` run by helper ``s - 1`` (IncompleteReadError if it died)."""
        reader, writer = self._streams[s - 1]
        shard_fd, result_fd = self._files[s - 1]
        writer.write(_FRAME.pack(_write(shard_fd, encode_shard(shard))))
        await writer.drain()
        (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
        return decode_result(_read(result_fd, size))

    def pids(self) -> list[int]:
        """The helpers' process ids."""
        return [process.pid for process in self._processes]

    def stop(self) -> None:
        """End the helpers (the end of their stdin ends them) and wait for each, by its PID."""
        processes, self._processes, self._streams = self._processes, [], []
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for files in self._files:
            for fd in files:
                os.close(fd)
        self._files = []


if __name__ == "__main__":  # by its module name: one copy of the module, whatever imports it
    from app.engine import helpers

    helpers.helper_main(*sys.argv[1:4])
