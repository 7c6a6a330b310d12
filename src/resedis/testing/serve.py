"""``resedis serve`` in a subprocess on a free loopback port, for browser tests and the
screenshot script (``tests/server/test_web_browser.py``, ``scripts/screenshot.py``).

>>> server = ServeProcess(db, log)            # doctest: +SKIP  (returns once /healthz answers)
>>> server.url                                # doctest: +SKIP
'http://127.0.0.1:40123'
>>> server.stop()                             # doctest: +SKIP
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``python -m resedis serve --db DB --port P *extra`` offline (no API key), output to
    ``log``; the constructor returns once ``/healthz`` answers 200, else raises
    RuntimeError with the log (the process exited, or ``timeout`` seconds passed).
    ``ready``: wait until ``/healthz`` also says ``ready`` (the models and the index loaded)."""

    def __init__(self, db: Path, log: Path, *extra: str, timeout: float = 180.0, ready: bool = False):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("RESEDIS_API_KEY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resedis", "serve", "--db", str(db), "--port", str(self.port), *extra],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"resedis serve exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                answer = httpx.get(f"{self.url}/healthz", timeout=1)
                if answer.status_code == 200 and (not ready or answer.json().get("ready")):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"resedis serve did not start:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
