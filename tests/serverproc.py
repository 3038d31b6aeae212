"""
A sensornet server in its own process (the installed C{twistd
sensornet-server}), for tests that kill it, restart it, or watch its memory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 free right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """
    C{twistd -n sensornet-server} on 127.0.0.1:C{port} with C{store}, its log
    in C{workdir}/server.log.
    """

    def __init__(self, store: str, workdir: str, port: Optional[int] = None, extra: List[str] = ()) -> None:
        self.store = store
        self.workdir = workdir
        self.port = port or freePort()
        self.extra = list(extra)
        self.process: Optional[subprocess.Popen] = None
        self.logPath = os.path.join(workdir, "server.log")

    def command(self) -> List[str]:
        return [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", self.logPath,
            "sensornet-server", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--http", "none", "--store", self.store, *self.extra,
        ]

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        """
        Start the server and wait until it accepts connections.
        """
        self.process = subprocess.Popen(
            self.command(), cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise AssertionError(f"server did not listen within {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """
        SIGKILL: the crash no shutdown code can soften.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """
        SIGTERM, as a service manager stops it; returns the exit status.
        """
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("server did not stop on SIGTERM")
        return self.process.returncode

    def rss(self) -> int:
        """
        The server's resident memory, bytes.
        """
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()[-5000:]
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None
