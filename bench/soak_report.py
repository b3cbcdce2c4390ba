"""bench/soak.py's samples and report: the server's memory, CPU and state sizes every
``--every`` seconds, written as a markdown table and a PNG of RSS over time."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sipp_final_stats
from soak_load import WS_CRLF_EVERY, WS_REFRESH
from soak_server import Soak

MINUTES_SHOWN = (1, 10, 30, 60)

# --- sampling ------------------------------------------------------------------------------

STATE_RE = re.compile(r'^siptrio_state_entries\{table="([^"]+)"\} ([0-9.e+]+)$', re.M)
GAUGES = (
    ("transactions.server", r'^siptrio_transactions\{kind="server"\} ([0-9.e+]+)$'),
    ("transactions.client", r'^siptrio_transactions\{kind="client"\} ([0-9.e+]+)$'),
    ("dialogs", None),
    ("bindings", None),
    ("flows", None),
)


def state_sizes(text: str) -> dict[str, float]:
    """Every siptrio_state_entries table; else (older code) the gauges it has."""
    sizes = {name: float(v) for name, v in STATE_RE.findall(text)}
    if sizes:
        return sizes
    for name, pattern in GAUGES:
        if pattern is None:
            values = re.findall(rf"^siptrio_{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
            sizes[name] = sum(float(v) for v in values)
        else:
            m = re.search(pattern, text, re.M)
            if m:
                sizes[name] = float(m.group(1))
    return sizes


def proc_kib(pid: int) -> tuple[int, int]:
    """VmRSS and Pss of one process, KiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss: int
    pss: int
    cpu: float  # share of one CPU since the last sample
    load: float
    calls_ok: int
    calls_failed: int
    loaded: bool
    sizes: dict[str, float]


def sipp_counts(workdir: Path) -> tuple[int, int]:
    stats = sipp_final_stats(workdir / "caller_stat.csv")
    try:
        return int(stats.get("SuccessfulCall(C)", 0)), int(stats.get("FailedCall(C)", 0))
    except ValueError:
        return 0, 0


def at_minute(samples: list[Sample], minute: float) -> Sample | None:
    """The sample nearest to ``minute`` of the load (None if the run did not get there)."""
    loaded = [s for s in samples if s.loaded]
    if not loaded or loaded[-1].t < minute * 60 - 20:
        return None
    return min(loaded, key=lambda s: abs(s.t - minute * 60))


# --- the report ----------------------------------------------------------------------------


def report(soak: Soak, samples: list[Sample], meta: dict[str, Any], label: str) -> str:
    tables = sorted({k for s in samples for k in s.sizes})
    reg, ws = soak.client_counts("register"), soak.client_counts("ws")
    lines = [
        f"# Soak: {label}",
        "",
        f"Started {meta['started']} UTC on {meta['machine']}; code under test: `{soak.tree}` "
        f"({meta['commit']}); Python {meta['python']}.",
        "",
        f"`bench/soak.py --minutes {soak.minutes:g} --calls {soak.calls} --registers "
        f"{soak.registers} --users {soak.users} --ws {soak.ws}`: calls through the proxy over "
        "UDP (SIPp uac.xml to a registered SIPp callee, no pause), REGISTER refreshes over UDP, "
        f"WebSocket flows (SIP.js-shaped, refreshed every {WS_REFRESH:g} s, CRLF every "
        f"{WS_CRLF_EVERY:g} s, pinged by the server), all on 127.0.0.1, default settings "
        "otherwise. A sample every 15 s: VmRSS and Pss of the server, its CPU share since "
        "the last sample (100 % = one CPU), the load average (1 min; 2 CPUs shared with "
        "other people's work), the calls SIPp has counted, and the server's state sizes.",
        "",
    ]
    shown = [(m, at_minute(samples, m)) for m in MINUTES_SHOWN if m <= soak.minutes + 0.5]
    if samples:
        last_loaded = [s for s in samples if s.loaded]
        lines += ["## RSS at minutes " + ", ".join(str(m) for m, _ in shown), ""]
        lines += ["| minute | RSS MiB | Pss MiB | " + " | ".join(tables) + " |"]
        lines += ["|---|---|---|" + "---|" * len(tables)]
        for m, s in shown:
            if s is None:
                lines.append(f"| {m} | (not reached) | |" + " |" * len(tables))
                continue
            lines.append(
                f"| {m} | {s.rss / 1024:.1f} | {s.pss / 1024:.1f} | "
                + " | ".join(f"{s.sizes.get(k, 0):.0f}" for k in tables)
                + " |"
            )
        at10 = at_minute(samples, 10)
        if last_loaded and at10 is not None:
            end = last_loaded[-1]
            growth = (end.rss - at10.rss) / at10.rss * 100
            lines += [
                "",
                f"End of the load (minute {end.t / 60:.1f}): RSS {end.rss / 1024:.1f} MiB, "
                f"{growth:+.1f} % against minute 10 (goal: within 10 %).",
            ]
        if samples[-1] is not None and not samples[-1].loaded:
            s = samples[-1]
            lines.append(
                f"\nAfter {s.t / 60 - soak.minutes:.1f} min without load: RSS "
                f"{s.rss / 1024:.1f} MiB; "
                + ", ".join(f"{k} {s.sizes.get(k, 0):.0f}" for k in tables)
                + "."
            )
        ok, failed = sipp_counts(soak.workdir)
        lines += [
            "",
            f"Calls: {ok} successful, {failed} failed (SIPp). REGISTER client: "
            + (", ".join(f"{k}: {v}" for k, v in sorted(reg.items())) or "-")
            + ". WebSocket clients: "
            + (", ".join(f"{k}: {v}" for k, v in sorted(ws.items())) or "-")
            + ".",
            "",
            "## Every sample",
            "",
            "| minute | load | RSS MiB | Pss MiB | CPU % | load avg | calls ok | calls failed | "
            + " | ".join(tables)
            + " |",
            "|---|---|---|---|---|---|---|---|" + "---|" * len(tables),
        ]
        for s in samples:
            lines.append(
                f"| {s.t / 60:.2f} | {'yes' if s.loaded else 'no'} | {s.rss / 1024:.1f} | "
                f"{s.pss / 1024:.1f} | {s.cpu * 100:.0f} | {s.load:.2f} | {s.calls_ok} | "
                f"{s.calls_failed} | "
                + " | ".join(f"{s.sizes.get(k, 0):.0f}" for k in tables)
                + " |"
            )
    lines.append("")
    return "\n".join(lines)


def plot(samples: list[Sample], path: Path, label: str, minutes: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak: matplotlib is not installed; no PNG", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = [s.t / 60 for s in samples]
    ax.plot(xs, [s.rss / 1024 for s in samples], label="VmRSS")
    ax.plot(xs, [s.pss / 1024 for s in samples], label="Pss", linestyle="--")
    ax.axvline(minutes, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("minutes since the load started (dotted: load ends)")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"siptrio server memory: {label}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def describe_tree(tree: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        return "?"
    return out + (" + uncommitted changes" if dirty else "")
