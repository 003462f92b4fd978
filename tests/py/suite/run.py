#!/usr/bin/env python3
"""Runs py-consul's own test suite (sdist 1.8.0) against a Beacon binary and compares each test's
outcome with an expected-outcome list.

    run.py BEACON_BIN EXPECTED_LIST WORK_DIR [--cache DIR] [--timeout SECONDS]

Run it with a Python that has py-consul, pytest, pytest-asyncio, pytest-timeout and aiohttp
installed (target/py-venv). The sdist is fetched (pinned sha256, see fetch.py) into the cache dir
(default: <repo>/target/py-consul-sdist) unless already there; WORK_DIR/suite is recreated with
upstream's tests/ plus our conftest.py, and pytest runs there with BEACON_BIN set.

EXPECTED_LIST has one line per pytest node id:

    <nodeid> pass
    <nodeid> fail  # which Beacon behaviour differs
    <nodeid> n/a   # the Consul feature Beacon does not have

``fail`` and ``n/a`` both mean "must not pass". Exits 0 only if every test matches its entry and
every entry names a test that ran (a test listed as passing that fails is re-run up to twice
first, as upstream's CI does with --reruns); otherwise prints a table of the differences and exits 1
(2 for usage or set-up errors, or if pytest itself broke or overran).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the source tree

import fetch  # noqa: E402  pylint: disable=wrong-import-position

STATES = ("pass", "fail", "n/a")
RERUNS = 2
NEEDED_MODULES = ("consul", "pytest", "pytest_asyncio", "pytest_timeout", "aiohttp", "packaging")


def parse_expected(path: str) -> dict[str, tuple[str, str]]:
    """nodeid -> (state, reason)."""
    expected: dict[str, tuple[str, str]] = {}
    problems = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            body, _, reason = line.partition("#")
            parts = body.split()
            if len(parts) != 2 or parts[1] not in STATES:
                problems.append(f"{path}:{n}: expected '<nodeid> pass|fail|n/a [# reason]', got {line!r}")
                continue
            nodeid, state = parts
            if nodeid in expected:
                problems.append(f"{path}:{n}: duplicate entry for {nodeid}")
            expected[nodeid] = (state, reason.strip())
    if problems:
        raise SystemExit("\n".join(problems))
    return expected


def run_pytest(beacon: str, suite_dir: str, results: str, log: str, timeout: float, tests: list[str]) -> int:
    env = dict(os.environ)
    env["BEACON_BIN"] = beacon
    env["BEACON_SUITE_RESULTS"] = results
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("CONSUL_HTTP_TOKEN", None)
    env.pop("CONSUL_HTTP_ADDR", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "--tb=short", *tests]
    with open(log, "wb") as out:
        # Own session: on overrun the whole group (pytest and any beacon it started) is killed.
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            cmd, cwd=suite_dir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -1


def pytest_results(
    beacon: str, suite: str, results_path: str, log: str, timeout: float, tests: list[str]
) -> dict[str, dict[str, str]] | None:
    """{nodeid: {"outcome", "message"}} from one pytest run, or None (after saying why)."""
    if os.path.exists(results_path):
        os.remove(results_path)
    code = run_pytest(beacon, suite, results_path, log, timeout, tests)
    if code == -1:
        print(f"pytest did not finish within {timeout:.0f}s; its output ({log}):\n{tail(log)}")
        return None
    # 0: all passed, 1: some failed; anything else means pytest itself could not do its job.
    if code not in (0, 1) or not os.path.exists(results_path):
        print(f"pytest exited with {code}; its output ({log}):\n{tail(log)}")
        return None
    with open(results_path, encoding="utf-8") as f:
        return json.load(f)


def tail(path: str, lines: int = 60) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("beacon", help="beacon binary to test")
    ap.add_argument("expected", help="expected-outcome list (expected.txt)")
    ap.add_argument("work_dir", help="scratch directory (suite copy, results, pytest log)")
    ap.add_argument("--cache", default=os.path.join(REPO, "target", "py-consul-sdist"), help="sdist cache dir")
    ap.add_argument("--timeout", type=float, default=240.0, help="bound for all pytest runs together, seconds")
    args = ap.parse_args()

    missing = []
    for mod in NEEDED_MODULES:
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        print(
            f"{sys.executable} lacks {', '.join(missing)}: "
            "pip install py-consul==1.8.0 pytest pytest-asyncio pytest-timeout aiohttp packaging",
            file=sys.stderr,
        )
        return 2

    beacon = os.path.abspath(args.beacon)
    if not os.access(beacon, os.X_OK):
        print(f"not an executable: {beacon}", file=sys.stderr)
        return 2
    expected = parse_expected(args.expected)

    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    suite = fetch.prepare_suite(os.path.abspath(args.cache), os.path.join(work, "suite"))
    results_path = os.path.join(work, "results.json")
    log = os.path.join(work, "pytest.log")

    started = time.monotonic()
    actual = pytest_results(beacon, suite, results_path, log, args.timeout, ["tests"])
    if actual is None:
        return 2

    # Like upstream's CI (pytest --reruns=3), a test listed as passing that failed gets re-run,
    # up to RERUNS times: a few tests race their own sleeps on a loaded machine.
    flaky = []
    for attempt in range(1, RERUNS + 1):
        again = sorted(k for k, v in actual.items() if v["outcome"] != "pass" and expected.get(k, ("",))[0] == "pass")
        if not again:
            break
        budget = args.timeout - (time.monotonic() - started)
        if budget < 30:
            break
        print(f"re-running {len(again)} test(s) listed as passing (attempt {attempt}): {' '.join(again)}")
        rerun_log = os.path.join(work, f"pytest-rerun{attempt}.log")
        rerun = pytest_results(beacon, suite, results_path, rerun_log, budget, again)
        if rerun is None:
            return 2
        for k, v in rerun.items():
            if v["outcome"] == "pass":
                flaky.append(k)
            actual[k] = v
    elapsed = time.monotonic() - started
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(actual, f, indent=1, sort_keys=True)

    diffs = []  # (nodeid, expected, actual, note)
    for nodeid in sorted(set(expected) | set(actual)):
        want = expected.get(nodeid)
        got = actual.get(nodeid)
        if got is None:
            diffs.append((nodeid, want[0], "-", "listed but did not run (removed or renamed?)"))
            continue
        outcome, message = got["outcome"], got["message"]
        if want is None:
            diffs.append((nodeid, "-", outcome, "not in the list" + (f": {message}" if message else "")))
        elif want[0] == "pass" and outcome != "pass":
            diffs.append((nodeid, "pass", outcome, message))
        elif want[0] != "pass" and outcome == "pass":
            diffs.append((nodeid, want[0], "pass", f"now passes; listed as: {want[1]}"))

    counts: dict[str, int] = {}
    for got in actual.values():
        counts[got["outcome"]] = counts.get(got["outcome"], 0) + 1
    listed: dict[str, int] = {}
    for state, _ in expected.values():
        listed[state] = listed.get(state, 0) + 1
    print(
        f"py-consul {fetch.VERSION} suite against {beacon}: {len(actual)} tests in {elapsed:.0f}s, "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f"; list: {len(expected)} entries, "
        + ", ".join(f"{k} {v}" for k, v in sorted(listed.items()))
    )
    for k in flaky:
        print(f"flaky: {k} failed first, passed on a re-run")
    if not diffs:
        print("every outcome matches the list")
        return 0

    w_id = max(len("test"), *(len(d[0]) for d in diffs))
    print(f"\n{len(diffs)} difference(s) from {args.expected}:\n")
    print(f"{'test':<{w_id}}  {'expected':<8}  {'actual':<6}  note")
    print(f"{'-' * w_id}  {'-' * 8}  {'-' * 6}  {'-' * 4}")
    for nodeid, want, got, note in diffs:
        print(f"{nodeid:<{w_id}}  {want:<8}  {got:<6}  {note}")
    print(f"\n(pytest output: {log}; beacon logs: {os.path.join(suite, 'logs')})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
