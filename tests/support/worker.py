"""A Hydrant worker as a real process (`python -m app.tools.cli worker`), as Kubernetes would run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.kafka.broker import free_port
from tests.support.broker import BrokerUnderTest

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(
        self,
        broker: BrokerUnderTest,
        pipeline: Path,
        data_dir: Path,
        app_id: str,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "HYDRANT_BROKER": broker.url,
            "HYDRANT_BROKER_PROFILE": broker.profile,
            "HYDRANT_PIPELINE": str(pipeline),
            "HYDRANT_DATA_DIR": str(data_dir),
            "HYDRANT_APP_ID": app_id,
            "HYDRANT_WEB_PORT": str(self.port),
            "HYDRANT_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.tools.cli", "worker"],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 90.0, poll: float = 0.2) -> list[httpx.Response]:
        """Poll /readyz every ``poll`` seconds until 200; returns the answers seen before it (503s
        while recovering)."""
        deadline = time.monotonic() + timeout
        before: list[httpx.Response] = []
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=1)
                if response.status_code == 200:
                    return before
                before.append(response)
            except httpx.HTTPError:
                pass
            time.sleep(poll)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log()[-4000:]}")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=5)

    def ready(self) -> bool:
        try:
            return self.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching ``labels``, read from /metrics."""
        text = self.get("/metrics").text
        return sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Graceful by default (SIGTERM: Faust commits offsets and closes); SIGKILL for crashes."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            children = _descendants(self.proc.pid)
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            # Its helper and serving processes end when it does (SIGTERM on the parent's death), a
            # moment later: wait, so a test that then wipes the data dir does not race one of them
            _wait_gone(children, timeout)
        return self.proc.returncode


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
        except OSError:
            continue
        children = [int(child) for child in text.split()]
        found += children
        todo += children
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie nobody reaps has ended)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait up to ``timeout`` for ``pids`` to end, then SIGKILL what is left."""
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for: {what}")
