"""Shared fixtures. eBPF tests get the real kernel or, outside CI, skip with the reason.

With SYSDREAM_REQUIRE_EBPF=1 (set by .ci/run) a missing prerequisite fails the test
instead, and any skip of an `ebpf`-marked test is turned into a failure.
"""

from __future__ import annotations

import os

import pytest

from sysdream.probes import preflight

REQUIRE_EBPF = os.environ.get("SYSDREAM_REQUIRE_EBPF") == "1"


@pytest.fixture(scope="session")
def ebpf_ready() -> None:
    """The kernel can take our BPF programs; otherwise skip (or fail in CI) with why."""
    failed = [c for c in preflight.run_capture_checks() if not c.ok]
    if failed:
        why = "; ".join(f"{c.name}: {c.detail} (fix: {c.fix})" for c in failed)
        if REQUIRE_EBPF:
            pytest.fail(f"SYSDREAM_REQUIRE_EBPF=1 but capture cannot work: {why}")
        pytest.skip(f"capture cannot work here: {why}")


@pytest.fixture
def capture(ebpf_ready):
    """A factory loading the real capture program; every program is detached after the test."""
    from sysdream.probes.capture import Capture, CaptureSettings

    loaded: list[Capture] = []

    def load(**settings) -> Capture:
        cap = Capture(CaptureSettings(**settings))
        loaded.append(cap)
        return cap

    yield load
    for cap in loaded:
        cap.close()


def pytest_collection_modifyitems(items):
    for item in items:
        if "capture" in getattr(item, "fixturenames", ()) or \
                "ebpf_ready" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ebpf)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_EBPF and report.skipped and item.get_closest_marker("ebpf"):
        report.outcome = "failed"
        report.longrepr = f"eBPF test skipped under SYSDREAM_REQUIRE_EBPF=1: {report.longrepr}"
