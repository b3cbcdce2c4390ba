"""What a packager ships: the systemd unit, the container image, the man page, completion.

The unit is parsed by Debian's ``systemd-analyze verify`` (with its ExecStart pointed
at this checkout's ``siptrio``, which must exist for the check). No Docker engine runs
here, so the Dockerfile is checked by reading it: what it copies exists, it runs as a
user, its volumes are there, and the config it ships passes check-config.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from siptrio.app.cli import _parser
from siptrio.app.config import load_config
from siptrio.app.manpage import render

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "examples" / "systemd" / "siptrio.service"
DOCKERFILE = ROOT / "Dockerfile"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_reloads_with_sighup_as_a_dedicated_user_and_is_hardened() -> None:
    d = directives(UNIT.read_text())
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"] and d["User"] == ["siptrio"]
    assert d["ExecStart"][0].endswith("siptrio serve --config /etc/siptrio/siptrio.ini")
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"] and d["StateDirectory"] == ["siptrio"]
    assert d["CapabilityBoundingSet"] == [""]  # no capability at all unless uncommented


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    siptrio = Path(sys.executable).with_name("siptrio")
    if not siptrio.exists():
        pytest.skip(f"{siptrio} is not installed (pip install -e .)")
    unit = tmp_path / "siptrio.service"
    unit.write_text(UNIT.read_text().replace("/opt/siptrio/bin/siptrio", str(siptrio)))
    # --man=no: Documentation=man:siptrio(1) is for installed systems (siptrio manpage)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr  # unknown keys warn
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSystm="))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(broken)], capture_output=True, text=True
    )
    assert "Unknown key 'ProtectSystm'" in done.stderr  # the check does look


def test_the_dockerfile_is_debian_slim_non_root_with_volumes_and_a_valid_config() -> None:
    text = DOCKERFILE.read_text()
    lines = [li for li in text.replace("\\\n", " ").splitlines() if li and not li.startswith("#")]
    froms = [li.split()[1] for li in lines if li.startswith("FROM ")]
    assert froms and all(re.fullmatch(r"debian:[a-z]+-slim", image) for image in froms)
    users = [li.split()[1] for li in lines if li.startswith("USER ")]
    assert users == ["siptrio"]
    assert 'VOLUME ["/etc/siptrio", "/var/lib/siptrio"]' in lines
    copied = {}
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            for source in words[:-1]:
                assert (ROOT / source).exists(), source
                copied[words[-1]] = source
    config = copied["/etc/siptrio/siptrio.ini"]
    assert '"--config", "/etc/siptrio/siptrio.ini"' in text
    loaded = load_config(ROOT / config)
    assert loaded.sip.listen_addr == ("0.0.0.0",) and loaded.auth.enable
    assert loaded.admin.listen_addr == "127.0.0.1" and loaded.logging.format == "json"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "**/node_modules" in ignored


def test_the_man_page_is_current_and_clean() -> None:
    shipped = (ROOT / "docs" / "siptrio.1").read_text()
    fresh = render(_parser())
    assert shipped.split("\n", 1)[1] == fresh.split("\n", 1)[1], (
        "run: siptrio manpage > docs/siptrio.1"
    )
    for command in ("serve", "reload", "cdrs", "certs", "completion"):
        assert f".SS {command}" in fresh
    assert ".SH SIGNALS" in fresh and "SIGHUP reloads" in fresh
    if shutil.which("groff"):
        done = subprocess.run(
            ["groff", "-man", "-ww", "-z", str(ROOT / "docs" / "siptrio.1")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr


def test_bash_completion_knows_the_commands_and_options(tmp_path: Path) -> None:
    script = subprocess.run(
        [sys.executable, "-m", "siptrio", "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    (tmp_path / "siptrio.bash").write_text(script)

    def complete(*words: str) -> list[str]:
        probe = (
            f"source {tmp_path / 'siptrio.bash'}; COMP_WORDS=(siptrio {' '.join(words)}); "
            f"COMP_CWORD={len(words)}; COMP_LINE='siptrio {' '.join(words)}'; "
            f"COMP_POINT=${{#COMP_LINE}}; _shtab_siptrio; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
        return sorted(done.stdout.split())

    assert complete("re") == ["reload"]
    assert complete("serve", "--s") == ["--set", "--sip-trace"]
    assert complete("completion", "") == ["bash", "tcsh", "zsh"]
