#!/usr/bin/env python3
"""Fetches py-consul's sdist (pinned version and sha256) and lays out its test suite for Beacon.

    fetch.py CACHE_DIR [SUITE_DIR]

Downloads ``py_consul-1.8.0.tar.gz`` into CACHE_DIR unless a copy with the pinned sha256 is
already there. The URL comes from PyPI's JSON API (falling back to the PEP 691 JSON simple
index), and both the digest PyPI lists and the downloaded bytes must equal the pinned sha256.

With SUITE_DIR, (re)creates it as: ``tests/`` (upstream's tests, unmodified), ``conftest.py``
(ours, next to this script, in place of upstream's Docker-based root conftest.py) and
``pytest.ini``. Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import urllib.request

PACKAGE = "py-consul"
VERSION = "1.8.0"
SDIST = "py_consul-1.8.0.tar.gz"
SHA256 = "ed9ab0adb335d33ea84f7622f372411f8e288bb09aee5e7632264d28d285a52c"

HERE = os.path.dirname(os.path.abspath(__file__))

PYTEST_INI = """\
[pytest]
# From upstream's pyproject.toml (minus coverage), plus a per-test bound.
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
timeout = 20
timeout_method = signal
"""


def _get(url: str, accept: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - fixed https URLs
        return resp.read()


def _sdist_url() -> tuple[str, str]:
    """(url, sha256) of the sdist as PyPI lists it."""
    errors = []
    try:
        meta = json.loads(_get(f"https://pypi.org/pypi/{PACKAGE}/{VERSION}/json"))
        for f in meta["urls"]:
            if f["filename"] == SDIST:
                return f["url"], f["digests"]["sha256"]
        errors.append("JSON API: sdist not listed")
    except Exception as e:  # pylint: disable=broad-exception-caught
        errors.append(f"JSON API: {e}")
    try:
        index = json.loads(_get(f"https://pypi.org/simple/{PACKAGE}/", "application/vnd.pypi.simple.v1+json"))
        for f in index["files"]:
            if f["filename"] == SDIST:
                return f["url"], f["hashes"]["sha256"]
        errors.append("simple index: sdist not listed")
    except Exception as e:  # pylint: disable=broad-exception-caught
        errors.append(f"simple index: {e}")
    raise RuntimeError(f"cannot locate {SDIST} on PyPI: {'; '.join(errors)}")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fetch_sdist(cache_dir: str) -> str:
    """Path of the verified sdist in cache_dir, downloading it if needed."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, SDIST)
    if os.path.exists(path) and _sha256(path) == SHA256:
        return path
    url, listed = _sdist_url()
    if listed != SHA256:
        raise RuntimeError(f"PyPI lists sha256 {listed} for {SDIST}, pinned is {SHA256}")
    data = _get(url)
    got = hashlib.sha256(data).hexdigest()
    if got != SHA256:
        raise RuntimeError(f"downloaded {SDIST} has sha256 {got}, pinned is {SHA256}")
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def prepare_suite(cache_dir: str, suite_dir: str) -> str:
    """Recreates suite_dir with upstream's tests/, our conftest.py and pytest.ini."""
    sdist = fetch_sdist(cache_dir)
    if os.path.exists(suite_dir):
        shutil.rmtree(suite_dir)
    os.makedirs(suite_dir)
    prefix = f"py_consul-{VERSION}/tests/"
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix) or not m.isfile():
                continue
            rel = m.name[len(prefix) :]
            if rel.startswith("/") or ".." in rel.split("/"):
                raise RuntimeError(f"unsafe path in sdist: {m.name}")
            m.name = "tests/" + rel
            members.append(m)
        if not members:
            raise RuntimeError(f"no tests/ in {sdist}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(suite_dir, members=members, filter="data")
        else:  # names were checked above
            tar.extractall(suite_dir, members=members)  # noqa: S202
    shutil.copy(os.path.join(HERE, "conftest.py"), os.path.join(suite_dir, "conftest.py"))
    with open(os.path.join(suite_dir, "pytest.ini"), "w", encoding="utf-8") as f:
        f.write(PYTEST_INI)
    return suite_dir


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    if len(sys.argv) == 3:
        print(prepare_suite(sys.argv[1], sys.argv[2]))
    else:
        print(fetch_sdist(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
