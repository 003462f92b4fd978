"""Beacon's replacement for the root ``conftest.py`` of py-consul's sdist (1.8.0).

Upstream starts ``hashicorp/consul`` in Docker for every test (once per Consul version). Here each
test gets a fresh ``beacon agent --dev`` process instead, on ephemeral loopback ports, from the
binary named by the ``BEACON_BIN`` environment variable. The fixtures keep upstream's names and
shapes (minus the per-Consul-version parametrisation), so ``tests/conftest.py`` and the test
files run unmodified:

* ``consul_instance``     -> ``ConsulInstance(container, port, version)``; ``container`` is the
                             ``BeaconProcess``, ``version`` is ``Config.Version`` of /v1/agent/self
* ``acl_consul_instance`` -> ``(ConsulInstance, master_token)``; Beacon has no ACL system, so the
                             agent is a plain dev agent and the token is just a random string
* ``consul_port``         -> ``(port, version)``

In upstream's container, ``localhost:8500`` is the Consul agent itself, and two tests register
HTTP health checks against it expecting them to pass. Beacon listens on an ephemeral port, so a
session-wide stand-in answering 200 is served on 127.0.0.1:8500 (if that port is free).

When ``BEACON_SUITE_RESULTS`` names a file, every test's outcome is written there as JSON
(``{nodeid: {"outcome": "pass"|"fail"|"skip", "message": ...}}``) for ``run.py``.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from requests import RequestException

ConsulInstance = collections.namedtuple("ConsulInstance", ["container", "port", "version"])

START_DEADLINE = 20.0  # seconds for the process to report its address and elect itself
LISTENING_HTTP = re.compile(r"listening http on (\S+)")

LOGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logs")


@pytest.fixture(scope="session", autouse=True)
def _unset_consul_token():
    if "CONSUL_HTTP_TOKEN" in os.environ:
        del os.environ["CONSUL_HTTP_TOKEN"]


class _Ok(BaseHTTPRequestHandler):
    def _ok(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "3")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"ok\n")

    do_GET = do_HEAD = do_POST = do_PUT = _ok

    def log_message(self, format, *args) -> None:  # pylint: disable=redefined-builtin
        pass


@pytest.fixture(scope="session", autouse=True)
def _agent_port_stand_in():
    """Something answering 200 on 127.0.0.1:8500, where the tests' HTTP checks point."""
    try:
        server = ThreadingHTTPServer(("127.0.0.1", 8500), _Ok)
    except OSError as e:
        warnings.warn(f"cannot serve the 127.0.0.1:8500 stand-in ({e}); HTTP-check tests may differ", stacklevel=1)
        yield
        return
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


class BeaconProcess:
    """One ``beacon agent --dev`` child with its own data dir; its stderr is kept in memory."""

    def __init__(self) -> None:
        binary = os.environ.get("BEACON_BIN")
        if not binary:
            raise RuntimeError("BEACON_BIN must name the beacon binary to test")
        self.data_dir = tempfile.mkdtemp(prefix="beacon-pyconsul-")
        self.lines: list[str] = []
        self._lock = threading.Lock()
        env = dict(os.environ)
        env["RUST_LOG"] = "info,openraft=warn,hickory_server=warn"
        env.pop("CONSUL_HTTP_TOKEN", None)
        # fmt: off
        args = [
            binary, "agent", "--dev",
            "--node", "py-consul-test",
            "--http-addr", "127.0.0.1:0",
            "--dns-addr", "127.0.0.1:0",
            "--data-dir", self.data_dir,
        ]
        # fmt: on
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def logs(self) -> bytes:
        with self._lock:
            return ("\n".join(self.lines) + "\n").encode("utf-8")

    def wait_for_line(self, pattern: re.Pattern, deadline: float) -> re.Match:
        while True:
            with self._lock:
                for line in self.lines:
                    m = pattern.search(line)
                    if m:
                        return m
            if self.proc.poll() is not None:
                raise RuntimeError(f"beacon exited ({self.proc.returncode}) before starting:\n{self.logs().decode()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"beacon did not log {pattern.pattern!r} in time:\n{self.logs().decode()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGKILL (no clean shutdown needed), then remove the data dir."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=2)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_beacon() -> tuple[BeaconProcess, int]:
    """Starts Beacon and waits, like upstream's start_consul_container, until it serves requests."""
    beacon = BeaconProcess()
    try:
        deadline = time.monotonic() + START_DEADLINE
        addr = beacon.wait_for_line(LISTENING_HTTP, deadline).group(1)
        port = int(addr.rsplit(":", 1)[1])
        base_uri = f"http://127.0.0.1:{port}/v1/"

        while True:
            if beacon.proc.poll() is not None:
                raise RuntimeError(f"beacon exited ({beacon.proc.returncode}):\n{beacon.logs().decode()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"beacon elected no leader in time:\n{beacon.logs().decode()}")
            try:
                response = requests.get(base_uri + "status/leader", timeout=2)
                if response.status_code == 200 and response.json():
                    break
            except (RequestException, ValueError):
                pass
            time.sleep(0.05)

        # Upstream's "additional check to ensure Consul is fully ready".
        for _ in range(10):
            try:
                requests.put(base_uri + "agent/service/register", json={"name": "test-service"}, timeout=2)
                response = requests.get(base_uri + "health/service/test-service", timeout=2)
                if response.status_code == 200 and response.json():
                    requests.put(base_uri + "agent/service/deregister/test-service", timeout=2)
                    return beacon, port
            except RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"failed to verify beacon startup:\n{beacon.logs().decode()}")
    except BaseException:
        beacon.stop()
        raise


def get_consul_version(port: int) -> str:
    base_uri = f"http://127.0.0.1:{port}/v1/"
    response = requests.get(base_uri + "agent/self", timeout=10)
    return response.json()["Config"]["Version"].strip()


def setup_and_teardown_beacon(request, acl_master_token: str | None = None):
    beacon, port = start_beacon()
    try:
        version = get_consul_version(port)
        instance = ConsulInstance(beacon, port, version)
        yield instance if acl_master_token is None else (instance, acl_master_token)
    finally:
        beacon.stop()
        os.makedirs(LOGS_DIR, exist_ok=True)
        with open(os.path.join(LOGS_DIR, f"{request.node.name}.log"), "wb") as f:
            f.write(beacon.logs())


@pytest.fixture
def consul_instance(request):
    yield from setup_and_teardown_beacon(request)


@pytest.fixture
def acl_consul_instance(request):
    yield from setup_and_teardown_beacon(request, acl_master_token=uuid.uuid4().hex)


@pytest.fixture
def consul_port(consul_instance):
    return consul_instance.port, consul_instance.version


# --- outcome collection for run.py -------------------------------------------------------------

_RESULTS: dict[str, dict[str, str]] = {}


def _short_message(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    elif isinstance(report.longrepr, tuple):  # skip: (path, line, reason)
        text = str(report.longrepr[-1])
    else:
        text = str(report.longrepr or "")
    text = " ".join(text.split())
    return text[:300]


def pytest_runtest_logreport(report) -> None:
    entry = _RESULTS.setdefault(report.nodeid, {"outcome": "pass", "message": ""})
    if report.failed:
        if entry["outcome"] != "fail":
            phase = "" if report.when == "call" else f"[{report.when}] "
            entry["outcome"] = "fail"
            entry["message"] = phase + _short_message(report)
    elif report.skipped and entry["outcome"] == "pass":
        entry["outcome"] = "skip"
        entry["message"] = _short_message(report)


def pytest_sessionfinish(session) -> None:  # pylint: disable=unused-argument
    path = os.environ.get("BEACON_SUITE_RESULTS")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_RESULTS, f, indent=1, sort_keys=True)
