"""Egress (issue 7): in ``PRIVACY_MODE=local`` the whole chain runs in a network namespace with only loopback.

``scripts/egress_check.py`` does the work: inside ``unshare --net`` it captures every packet with
tcpdump, shows there is no route out, runs the local Letta server, ``omi-letta serve`` and a scripted
model on 127.0.0.1, streams a two-voice dialogue, waits for its delivery to the agent, searches it
and asks the agent about it, then reads the capture back. This test runs it as a person would and
reads the summary it writes to ``tests/artifacts/egress/`` (ignored by git).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.egress_check import Summary, namespace_refusal, tally

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "egress"


@pytest.mark.timeout(600)
def test_the_whole_chain_runs_on_loopback_alone_and_no_packet_leaves_it() -> None:
    if refusal := namespace_refusal():
        pytest.skip(refusal)
    missing = [tool for tool in ("tcpdump", "ip", "espeak-ng") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed; `make system-deps` installs them")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "egress_check.py"), "--out", str(ARTIFACTS)],
        capture_output=True,
        text=True,
        timeout=560,
        cwd=ROOT,
    )
    output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output
    summary = json.loads((ARTIFACTS / "summary.json").read_text())

    # There was no way out, and the trap routed any attempt into the capture.
    assert "Network is unreachable" in summary["unreachable"], summary["unreachable"]
    assert summary["trap"]
    # Every step of the chain gave its result in there.
    steps = "\n".join(summary["steps"])
    for step in ("/v4/listen", "the outbox drained", "delivered to Letta", "/v1/memory/search", "/v1/chat"):
        assert step in steps, steps
    # The capture worked, and every packet it holds went from loopback to loopback.
    assert summary["packets"] > 0 and summary["interfaces"] == ["lo"], summary
    assert summary["addresses"] and all(ipaddress.ip_address(a).is_loopback for a in summary["addresses"])
    assert summary["foreign"] == [] and summary["unparsed"] == []
    assert summary["egress_log_lines"] == [], "a process logged a failed attempt to reach another machine"
    assert summary["passed"] and "PASSED" in done.stdout


def test_the_capture_reader_flags_a_packet_off_loopback() -> None:
    """The lines the trap caught before the fixes (ONNX Runtime's telemetry, NLTK's index) fail the check."""
    summary = Summary(trap=True)
    tally(
        [
            "03:03:15.728185 lo    In  IP 127.0.0.1.58908 > 127.0.0.1.33199: Flags [S], seq 2, length 0",
            "03:03:15.728190 lo    In  IP6 ::1.8000 > ::1.51234: Flags [P.], seq 1:10, length 9",
            "03:03:43.388 lo In IP 0.0.0.0.32934 > 10.255.255.53.53: 33742+ A? mobile.events.data.microsoft.com. (50)",
            "03:03:44.909919 lo    In  IP 0.0.0.0.46166 > 10.255.255.53.53: 47023+ A? raw.githubusercontent.com. (43)",
            "03:03:45.000000 lo    In  ARP, Request who-has 127.0.0.2 tell 127.0.0.1, length 28",
        ],
        summary,
    )
    assert summary.packets == 5 and summary.interfaces == ["lo"]
    assert summary.addresses == ["0.0.0.0", "10.255.255.53", "127.0.0.1", "::1"]
    assert [line.split(" > ")[1].split(":")[0] for line in summary.foreign] == ["10.255.255.53.53"] * 2
    assert len(summary.unparsed) == 1 and "ARP" in summary.unparsed[0]
