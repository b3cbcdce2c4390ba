"""RFC 4475 and RFC 5118 torture messages sent to a running siptrio over UDP and TCP.

The parser tests feed these messages to ``parse_message_untrusted``; this file checks
what a client on the wire actually gets back: which responses, whether a stream is
closed, whether the server survives. The messages name outside hosts (example.com
Routes, 192.0.2.0/24, 2001:db8::/32, a broadcast Via), so the server and the client
run together in a child process inside a loopback-only network namespace
(``unshare --net``): nothing can leave this machine whatever the server decides.

The expectations come from the torture set's ``index.tsv``: ``expect`` for UDP (and for
TCP unless ``tcp_expect`` says otherwise), plus the preferred status codes siptrio is
meant to give. Run with ``-rP`` or ``-s`` to see the table of actual answers.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TORTURE = REPO / "tests" / "data" / "torture"  # a byte-exact copy of shared/torture
CHILD = HERE / "torture_wire_child.py"
SETS = ("rfc4475", "rfc5118")
CHILD_TIMEOUT = 120

# Where siptrio is meant to give the code the RFC prefers (one final response, this one).
PREFERRED = {
    "badvers": 505,
    "scalar02": 400,
    "mismatch01": 400,
    "insuf": 400,
    "multi01": 400,
    "mcl01": 400,
    "unkscm": 416,
    "bext01": 420,
    "escnull": 200,
    "dblreq": 200,
    "cparam01": 200,
    "cparam02": 200,
    "regescrt": 200,
    "ipv6-good": 200,
}
# tcp_expect "reject" rows: clerr is an incomplete message (the server must keep waiting,
# so: no answer); ncl and mcl01 lose the framing (an error answer or none, then close).
TCP_MUST_CLOSE = {"ncl", "mcl01"}
TCP_SILENT = {"clerr"}

Record = dict[str, Any]


def load_index() -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for set_name in SETS:
        index = TORTURE / set_name / "index.tsv"
        if not index.exists():
            continue
        with index.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                rows[row["name"]] = {**row, "set": set_name}
    return rows


INDEX = load_index()
NAMES = sorted(INDEX)


def unshare_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8) for a loopback-only network namespace"
    probe = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", "ip link set lo up"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace (unshare --net): {probe.stderr.strip()}"
    return None


def format_table(results: dict[tuple[str, str], Record]) -> str:
    lines = [
        f"{'message':32} {'expect':10} {'pref':8} {'tcp_expect':10} "
        f"{'UDP answers':18} {'TCP answers':18} TCP closed"
    ]
    for name in NAMES:
        row = INDEX[name]
        udp = results.get((name, "udp"), {})
        tcp = results.get((name, "tcp"), {})
        lines.append(
            f"{name:32} {row['expect']:10} {row['preferred']:8} {row['tcp_expect']:10} "
            f"{_codes(udp):18} {_codes(tcp):18} {tcp.get('closed', '?')}"
        )
    return "\n".join(lines)


def _codes(record: Record) -> str:
    if "error" in record:
        return "ERROR"
    if "codes" not in record:
        return "?"
    return ",".join(str(c) for c in record["codes"]) or "-"


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Record]:
    if not INDEX:
        pytest.fail(f"torture messages not found under {TORTURE}")
    if (problem := unshare_problem()) is not None:
        pytest.skip(problem)
    tmp = tmp_path_factory.mktemp("torture-wire")
    # sh brings loopback up inside the new namespace, then becomes the child ("$0" "$@").
    proc = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" "$@"',
            sys.executable,
            str(CHILD),
            "--torture",
            str(TORTURE),
            "--tmp",
            str(tmp),
        ],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=REPO,
    )
    (tmp / "child.stdout").write_text(proc.stdout)
    (tmp / "child.stderr").write_text(proc.stderr)
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    done = records.pop()
    assert done.get("harness_errors") == 0, [r for r in records if "error" in r]
    results = {(r["name"], r["transport"]): r for r in records}
    table = format_table(results)
    (tmp / "answers.txt").write_text(table + "\n")
    print(f"\nTorture messages over the wire (child stderr: {tmp / 'child.stderr'}):\n{table}")
    return results


def _result(wire: dict[tuple[str, str], Record], name: str, transport: str) -> Record:
    record = wire.get((name, transport))
    assert record is not None, f"no result for {name} over {transport}"
    assert "error" not in record, f"harness error: {record['error']}"
    return record


def _describe(record: Record) -> str:
    return (
        f"{record['name']} over {record['transport'].upper()}: answers {record['lines'] or 'none'}, "
        f"closed={record['closed']}, server stats {record['stats']}"
    )


def _check_expect(expect: str, codes: list[int | None], why: str) -> None:
    if expect == "answer":
        assert codes, f"expected an answer: {why}"
        assert 400 not in codes, f"a valid message must not get 400: {why}"
    elif expect == "answer-any":
        assert codes, f"expected some answer: {why}"
    elif expect == "reject":
        assert all(c is not None and c >= 400 for c in codes), f"never 1xx-3xx: {why}"
    elif expect == "noreply":
        assert codes == [], f"a response must not be answered: {why}"
    else:
        raise AssertionError(f"unknown expect value {expect!r}")


def _check_preferred(name: str, codes: list[int | None], why: str) -> None:
    if name not in PREFERRED:
        return
    finals = [c for c in codes if c is not None and c >= 200]
    assert finals == [PREFERRED[name]], f"expected exactly one {PREFERRED[name]}: {why}"


@pytest.mark.parametrize("name", NAMES)
def test_torture_udp(wire: dict[tuple[str, str], Record], name: str) -> None:
    record = _result(wire, name, "udp")
    codes = record["codes"]
    why = _describe(record)
    _check_expect(INDEX[name]["expect"], codes, why)
    _check_preferred(name, codes, why)
    if name == "dblreq":
        # The trailing INVITE-looking octets of the datagram must not be answered.
        assert len(codes) == 1, f"exactly one response: {why}"
    assert record["alive"] == 200, f"server no longer answers OPTIONS: {why}"


@pytest.mark.parametrize("name", NAMES)
def test_torture_tcp(wire: dict[tuple[str, str], Record], name: str) -> None:
    record = _result(wire, name, "tcp")
    codes = record["codes"]
    row = INDEX[name]
    why = _describe(record)
    tcp_expect = row["tcp_expect"]
    if tcp_expect == "reject":
        _check_expect("reject", codes, why)
        if name in TCP_SILENT:
            assert codes == [], f"incomplete message: wait for more octets, no answer: {why}"
        if name in TCP_MUST_CLOSE:
            assert record["closed"], f"framing lost: the server must close: {why}"
    elif tcp_expect == "answer":
        assert name == "dblreq", f"no rule for tcp_expect=answer on {name}"
        # Two real requests on the stream: the REGISTER (200) and the INVITE (not 2xx).
        # What follows them ("C" CRLF CRLF, the INVITE body is 5 octets longer than its
        # Content-Length) may then be refused and the connection closed.
        finals = sorted(c for c in codes if c is not None and c >= 200)
        assert len(finals) == 2, f"both requests answered: {why}"
        assert finals[0] == 200, f"the REGISTER gets 200: {why}"
        assert finals[1] >= 300, f"the INVITE gets a non-2xx answer: {why}"
    elif tcp_expect == "any":
        pass  # cannot be framed on a stream: any outcome but a crash (checked below)
    else:
        assert tcp_expect == "-", f"unknown tcp_expect {tcp_expect!r}"
        _check_expect(row["expect"], codes, why)
        _check_preferred(name, codes, why)
    assert record["leftover"] == 0, f"a partial response was left on the stream: {why}"
    assert record["alive"] == 200, f"server no longer answers OPTIONS: {why}"


def test_torture_servers_unharmed(wire: dict[tuple[str, str], Record]) -> None:
    """Every message was sent on both transports and no server hit an internal error."""
    assert set(wire) == {(n, t) for n in NAMES for t in ("udp", "tcp")}
    crashed = {k: r["stats"] for k, r in wire.items() if r["stats"].get("internal_errors")}
    assert not crashed, f"internal errors (500s) while handling: {crashed}"
    dead = sorted(k for k, r in wire.items() if r["alive"] != 200)
    assert not dead, f"no 200 to the final OPTIONS after: {dead}"
