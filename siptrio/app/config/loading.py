"""Reading config.ini and --set overrides into one Config, with errors naming file,
line, section and key.
"""

from __future__ import annotations

import configparser
import difflib
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .schema import _SECTIONS
from .sections import Config, ConfigError
from .values import _BadValue

# --- loading -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Setting:
    """One raw value and where it came from, so any later error can point back at it."""

    text: str
    where: str  # "config.ini:12" or "command line --set sip.udp_port"
    rank: tuple[int, int]  # later settings rank higher; cross-field errors blame those
    from_file: bool


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Read, override and validate; raise ConfigError on the first problem found."""
    settings: dict[tuple[str, str], _Setting] = {}
    source = None
    if path is not None:
        source = os.fspath(path)
        settings.update(_read_file(source))
    for index, (name, text) in enumerate((overrides or {}).items()):
        where = f"command line --set {name}"
        section, dot, key = name.partition(".")
        if not dot:
            raise ConfigError(f"{where}: expected SECTION.KEY=VALUE, e.g. sip.udp_port=5070")
        key = key.strip().lower()
        _check_known(where, section, key)
        settings[section, key] = _Setting(
            text=text.strip(), where=where, rank=(1, index), from_file=False
        )
    return _build(settings, source, tuple((overrides or {}).items()))


def _check_known(where: str, section: str, key: str | None) -> None:
    if section not in _SECTIONS:
        message = f"{where}: unknown section [{section}]; known sections: "
        message += ", ".join(sorted(_SECTIONS)) + _did_you_mean(section, _SECTIONS, "[{}]")
        raise ConfigError(message)
    keys = _SECTIONS[section].keys
    if key is not None and _SECTIONS[section].free is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}", key):
            raise ConfigError(
                f"{where}: [{section}] {key}: a rule name is letters, digits, '.', '_', '+' "
                f"or '-' (up to 63)"
            )
        return
    if key is not None and key not in keys:
        message = f"{where}: [{section}] {key}: unknown key; known keys in [{section}]: "
        message += ", ".join(sorted(keys)) + _did_you_mean(key, keys)
        raise ConfigError(message)


def _did_you_mean(word: str, known: Mapping[str, object], form: str = "{}") -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {form.format(close[0])}?" if close else ""


def _read_file(source: str) -> dict[tuple[str, str], _Setting]:
    try:
        with open(source, encoding="utf-8-sig") as file:
            text = file.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {source}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"cannot read config file {source}: not UTF-8 text ({e})") from None
    parser = _parser()
    section_lines, key_lines = _line_numbers(parser, text)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        lines = list(io.StringIO(text))
        message = _parse_error_message(source, e, lines, section_lines, key_lines)
        raise ConfigError(message) from None
    settings = {}
    for section in parser.sections():
        _check_known(f"{source}:{section_lines.get(section, 0)}", section, None)
        for key, value in parser.items(section, raw=True):
            line = key_lines.get((section, key), 0)
            _check_known(f"{source}:{line}", section, key)
            settings[section, key] = _Setting(
                text=value, where=f"{source}:{line}", rank=(0, line), from_file=True
            )
    return settings


def _parser() -> configparser.RawConfigParser:
    # No interpolation, so "%" is plain text (tokens); no inline comments, so ";" and
    # "#" are plain text too; and no DEFAULT section: a [DEFAULT] here is a typo.
    return configparser.RawConfigParser(
        interpolation=None,
        inline_comment_prefixes=None,
        empty_lines_in_values=False,
        default_section="\0no default section",
    )


def _line_numbers(
    parser: configparser.RawConfigParser, text: str
) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Where each section and key first appears; configparser does not record it.

    This follows the line rules of RawConfigParser._read for the options set in
    _parser(): full-line comments, blank lines end a value, deeper indentation
    continues one.
    """
    sections: dict[str, int] = {}
    keys: dict[tuple[str, str], int] = {}
    section: str | None = None
    key: str | None = None
    indent = 0
    for lineno, line in enumerate(io.StringIO(text), start=1):  # as read_string does
        value = line.strip()
        if not value or value.startswith(("#", ";")):
            indent = 1 << 62
            continue
        line_indent = len(line) - len(line.lstrip())
        if section is not None and key and line_indent > indent:
            continue
        indent = line_indent
        if match := parser.SECTCRE.match(value):
            section, key = match.group("header"), None
            sections.setdefault(section, lineno)
        elif section is None:
            break  # configparser raises MissingSectionHeaderError here
        elif match := parser.OPTCRE.match(value):
            key = parser.optionxform(match.group("option").rstrip())
            keys.setdefault((section, key), lineno)
    return sections, keys


def _parse_error_message(
    source: str,
    error: configparser.Error,
    lines: list[str],
    section_lines: Mapping[str, int],
    key_lines: Mapping[tuple[str, str], int],
) -> str:
    match error:
        case configparser.MissingSectionHeaderError():
            return (
                f"{source}:{error.lineno}: {json.dumps(error.line.strip())} comes before any "
                f"[section] header; known sections: {', '.join(sorted(_SECTIONS))}"
            )
        case configparser.DuplicateSectionError():
            first = section_lines.get(error.section)
            return (
                f"{source}:{error.lineno}: duplicate section [{error.section}]; "
                f"first on line {first}"
            )
        case configparser.DuplicateOptionError():
            first = key_lines.get((error.section, error.option))
            return (
                f"{source}:{error.lineno}: [{error.section}] {error.option}: duplicate key; "
                f"first set on line {first}"
            )
        case configparser.ParsingError():
            lineno = error.errors[0][0]  # the line itself is stored as its repr()
            line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
            return (
                f"{source}:{lineno}: cannot parse {json.dumps(line)}: expected a [section] "
                f"header, key = value, or a comment line starting with # or ;"
            )
    return f"{source}: {error}"


def _build(
    settings: Mapping[tuple[str, str], _Setting],
    source: str | None,
    overrides: tuple[tuple[str, str], ...] = (),
) -> Config:
    base_dir = os.path.dirname(os.path.abspath(source)) if source is not None else None
    sections: dict[str, Any] = {}
    for name, spec in _SECTIONS.items():
        values: dict[str, Any] = {}
        if spec.free is not None:
            free = spec.free
            mine = sorted(
                ((key, setting) for (sec, key), setting in settings.items() if sec == name),
                key=lambda item: item[1].rank,
            )
            rules = []
            for key, given in mine:
                try:
                    rules.append(free(key)(given.text))
                except _BadValue as e:
                    raise ConfigError(_value_message(name, key, given, str(e))) from None
            sections[spec.attribute] = spec.cls(rules=tuple(rules))
            continue
        for key, parse in spec.keys.items():
            setting = settings.get((name, key))
            if setting is None:
                continue
            try:
                value = parse(setting.text)
            except _BadValue as e:
                raise ConfigError(_value_message(name, key, setting, str(e))) from None
            if key in spec.paths and isinstance(value, str):
                value = _resolve(value, base_dir if setting.from_file else None)
            values[key] = value
        sections[spec.attribute] = spec.cls(**values)
    config = Config(**sections, source=source, overrides=overrides)
    _check_relations(config, settings)
    return config


def _resolve(path: str, base_dir: str | None) -> str:
    """A file's relative paths mean the same thing whatever directory the server runs in."""
    if base_dir is None or path == ":memory:" or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def _value_message(section: str, key: str, setting: _Setting, expected: str) -> str:
    message = f"{setting.where}: [{section}] {key} = {json.dumps(setting.text)}: {expected}"
    if re.search(r"\s[#;]", setting.text):
        message += " (comments must be on a line of their own)"
    return message


def _check_relations(config: Config, settings: Mapping[tuple[str, str], _Setting]) -> None:
    """Checks across keys blame whichever of the keys was set last."""

    def fail(section: str, keys: tuple[str, ...], rule: str) -> None:
        values = getattr(config, _SECTIONS[section].attribute)
        blamed = max(
            ((settings[section, key], key) for key in keys if (section, key) in settings),
            key=lambda pair: pair[0].rank,
            default=None,
        )
        assert blamed is not None, "the defaults satisfy every check"
        setting, key = blamed
        got = ", ".join(f"{k} = {getattr(values, k)}" for k in keys)
        raise ConfigError(f"{setting.where}: [{section}] {key}: expected {rule}; got {got}")

    sip = config.sip
    if sip.t2 < sip.t1:
        fail("sip", ("t1", "t2"), "t2 >= t1")
    if config.auth.turn_uris and not config.auth.ephemeral_secrets:
        fail("auth", ("turn_uris",), "[auth] ephemeral_secrets too (TURN credentials need it)")
    reg = config.registrar
    if not reg.min_expires <= reg.default_expires <= reg.max_expires:
        keys = ("min_expires", "default_expires", "max_expires")
        fail("registrar", keys, "0 < min_expires <= default_expires <= max_expires")
    _check_ports(config, settings)


def _listening(config: Config) -> list[tuple[str, str, str, tuple[str, ...], int]]:
    """Every socket the server would bind: (section, port key, protocol, addresses, port)."""
    sip, tls, ws, admin = config.sip, config.tls, config.websocket, config.admin
    out = []
    if sip.udp_enable:
        out.append(("sip", "udp_port", "udp", sip.listen_addr, sip.udp_port))
    if sip.tcp_enable:
        out.append(("sip", "tcp_port", "tcp", sip.listen_addr, sip.tcp_port))
    if tls.enable:
        tls_addr = tls.listen_addr or sip.listen_addr
        out.append(("sip_tls", "listen_port", "tcp", tls_addr, tls.listen_port))
    ws_addr = ws.listen_addr or sip.listen_addr
    if ws.enable:
        out.append(("sip_websocket", "listen_port", "tcp", ws_addr, ws.listen_port))
    if ws.wss_enable:
        out.append(("sip_websocket", "wss_listen_port", "tcp", ws_addr, ws.wss_listen_port))
    if admin.enable:
        out.append(("admin", "listen_port", "tcp", (admin.listen_addr,), admin.listen_port))
    return out


_WILDCARDS = ("0.0.0.0", "::")


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether two address lists bind a common address (a wildcard covers its family)."""

    def covers(x: str, y: str) -> bool:
        return x == y or (x in _WILDCARDS and (":" in x) == (":" in y))

    return any(covers(x, y) or covers(y, x) for x in a for y in b)


def _check_ports(config: Config, settings: Mapping[tuple[str, str], _Setting]) -> None:
    """Two listeners on one TCP (or UDP) port would fail only at start: say so now,
    blaming whichever of the two ports was set last (port 0 picks a free one)."""
    sockets = [s for s in _listening(config) if s[4] != 0]
    for i, (sec_a, key_a, proto_a, addr_a, port_a) in enumerate(sockets):
        for sec_b, key_b, proto_b, addr_b, port_b in sockets[i + 1 :]:
            if proto_a != proto_b or port_a != port_b or not _overlap(addr_a, addr_b):
                continue
            ranked = sorted(
                [
                    (settings.get((sec_a, key_a)), sec_a, key_a, addr_a, f"[{sec_b}] {key_b}"),
                    (settings.get((sec_b, key_b)), sec_b, key_b, addr_b, f"[{sec_a}] {key_a}"),
                ],
                key=lambda r: r[0].rank if r[0] is not None else (-1, 0),
            )
            setting, sec, key, addresses, other = ranked[-1]
            where = setting.where if setting is not None else "the defaults"
            raise ConfigError(
                f"{where}: [{sec}] {key}: {proto_a.upper()} port {port_a} on "
                f"{', '.join(addresses)} is also {other}; expected a port no other "
                "listener uses (0 picks a free one)"
            )
