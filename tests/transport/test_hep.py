"""HEP capture: the packets' chunks, and Debian's sngrep as the collector writing a pcap.

sngrep listens for HEP (``-L``) and writes what it gets to a pcap (``-O``); with ``-L``
it opens no network device, so every SIP message in the file came through siptrio's
HEP tap and nowhere else.
"""

from __future__ import annotations

import ipaddress
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from support.client import SipClient
from support.server import running_server
from support.ua import SDP, UA

from siptrio.core.types import Transport
from siptrio.transport.hep import encode_hep3

needs_sngrep = pytest.mark.skipif(
    shutil.which("sngrep") is None, reason="sngrep missing: apt-get install -y sngrep"
)


def chunks(packet: bytes) -> dict[int, bytes]:
    assert packet[:4] == b"HEP3"
    (total,) = struct.unpack("!H", packet[4:6])
    assert total == len(packet)
    out, at = {}, 6
    while at < total:
        vendor, kind, length = struct.unpack("!HHH", packet[at : at + 6])
        assert vendor == 0 and length >= 6
        out[kind] = packet[at + 6 : at + length]
        at += length
    assert at == total
    return out


def test_a_packet_carries_addresses_ports_time_ids_and_the_message() -> None:
    message = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: abc\r\n\r\n"
    packet = encode_hep3(
        transport=Transport.UDP,
        src=("192.0.2.1", 5070),
        dst=("192.0.2.2", 5060),
        when=1_700_000_000.25,
        payload=message,
        capture_id=2001,
        correlation="abc",
    )
    c = chunks(packet)
    assert c[1] == b"\x02" and c[2] == bytes([17])  # IPv4, UDP
    assert c[3] == ipaddress.ip_address("192.0.2.1").packed
    assert c[4] == ipaddress.ip_address("192.0.2.2").packed
    assert struct.unpack("!H", c[7])[0] == 5070 and struct.unpack("!H", c[8])[0] == 5060
    assert struct.unpack("!I", c[9])[0] == 1_700_000_000
    assert struct.unpack("!I", c[10])[0] == 250_000
    assert c[11] == b"\x01" and struct.unpack("!I", c[12])[0] == 2001
    assert c[15] == message and c[17] == b"abc"
    v6 = chunks(
        encode_hep3(
            transport=Transport.WSS,
            src=("::1", 443),
            dst=("127.0.0.1", 9),  # a mapped peer on an IPv6 socket
            when=0.0,
            payload=message,
            capture_id=1,
        )
    )
    assert v6[1] == b"\x0a" and v6[2] == bytes([6])  # IPv6, TCP underneath WSS
    assert v6[6] == ipaddress.ip_address("::ffff:127.0.0.1").packed and 17 not in v6


# --- sngrep, the collector ---------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_bound(port: int) -> bool:
    wanted = f":{port:04X} "
    return any(
        wanted in line.split()[1] + " "
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]
    )


@contextmanager
def sngrep(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_udp_port()
    pcap = tmp_path / "out.pcap"
    proc = subprocess.Popen(
        ["sngrep", "-N", "-q", "-L", f"udp:127.0.0.1:{port}", "-O", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not udp_bound(port):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "sngrep did not start listening"
            time.sleep(0.05)
        yield port, pcap
    finally:
        proc.send_signal(signal.SIGINT)  # it writes out the pcap and exits
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Captured:
    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        for line in self.text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def read_pcap(path: Path) -> list[Captured]:
    """The SIP messages of a pcap as sngrep writes it (Ethernet, IPv4/IPv6, UDP)."""
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack("<IHHiIII", data[:24])
    assert magic == 0xA1B2C3D4 and linktype == 1, (hex(magic), linktype)
    out, at = [], 24
    while at < len(data):
        seconds, micros, caught, _ = struct.unpack("<IIII", data[at : at + 16])
        frame = data[at + 16 : at + 16 + caught]
        at += 16 + caught
        ethertype = struct.unpack("!H", frame[12:14])[0]
        ip = frame[14:]
        if ethertype == 0x0800:
            header = (ip[0] & 0x0F) * 4
            src_ip, dst_ip = ip[12:16], ip[16:20]
        else:
            assert ethertype == 0x86DD
            header = 40
            src_ip, dst_ip = ip[8:24], ip[24:40]
        udp = ip[header:]
        sport, dport = struct.unpack("!HH", udp[:4])
        out.append(
            Captured(
                time=seconds + micros / 1e6,
                src=(str(ipaddress.ip_address(src_ip)), sport),
                dst=(str(ipaddress.ip_address(dst_ip)), dport),
                text=udp[8:].decode("utf-8", "replace"),
            )
        )
    return out


async def bob_answers(bob: UA) -> None:
    invite = await bob.expect_request("INVITE")
    await bob.reply(invite, 180, "Ringing")
    await bob.reply(invite, 200, "OK", body=SDP)
    await bob.expect_request("ACK")
    bye = await bob.expect_request("BYE")
    await bob.reply(bye, 200, "OK")


@needs_sngrep
async def test_sngrep_receives_every_message_of_a_call(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    started = time.time()
    with sngrep(tmp_path) as (port, pcap):
        overrides = {
            "sip.domains": "example.com",
            "sip_websocket.enable": "true",
            "capture.hep": f"udp:127.0.0.1:{port}",
        }
        async with running_server(tmp_path, overrides) as rs:
            server_udp = rs.addr("udp")
            alice = UA(await SipClient.connect("udp", *server_udp), "alice")
            bob = UA(await SipClient.connect("ws", *rs.addr("ws"), nursery=nursery), "bob")
            await alice.register()
            await bob.register()
            nursery.start_soon(bob_answers, bob)
            invite, call_id = alice.invite("bob")
            await alice.client.send(invite)
            final = await alice.expect_response("INVITE")
            dialog = alice.uac_dialog(invite, final)
            await alice.client.send(alice.ack(dialog))
            bye = await alice.client.request(alice.in_dialog(dialog, "BYE"))
            assert bye.status == 200
            failed, failed_id = alice.invite("nobody")
            assert (await alice.client.request(failed)).status == 404
            with trio.fail_after(5):  # the last datagrams on their way to sngrep
                while rs.server.stats["hep.sent"] < 20:
                    await trio.sleep(0.02)
            sent = rs.server.stats["hep.sent"]
            await trio.sleep(0.3)
    captured = read_pcap(pcap)
    assert len(captured) == sent and rs.server.stats["hep.dropped"] == 0
    call = [m for m in captured if m.header("Call-ID") == call_id]
    lines = [(m.first_line.split(" sip:")[0], m.src, m.dst) for m in call]
    alice_addr = alice.client.local
    # the INVITE from alice to us, then from us on to bob's WebSocket flow
    assert ("INVITE", alice_addr, server_udp) in lines
    ws_local = rs.addr("ws")
    invites_out = [m for m in call if m.first_line.startswith("INVITE") and m.src == ws_local]
    assert len(invites_out) == 1 and invites_out[0].dst[0] == "127.0.0.1"
    firsts = [m.first_line for m in call]
    for expected in ("SIP/2.0 180 Ringing", "SIP/2.0 200 OK", "ACK sip:", "BYE sip:"):
        assert sum(f.startswith(expected) for f in firsts) >= 2, (expected, firsts)  # both legs
    assert all(started - 1 <= m.time <= time.time() for m in captured)
    assert [m.time for m in captured] == sorted(m.time for m in captured)
    refused = [m.first_line for m in captured if m.header("Call-ID") == failed_id]
    assert refused[0].startswith("INVITE sip:nobody@") and "SIP/2.0 404 Not Found" in refused
    registers = [m for m in captured if m.first_line.startswith("REGISTER ")]
    assert {m.src for m in registers} == {alice_addr, registers[-1].src}  # alice and bob


async def test_a_reload_moves_and_stops_the_capture(tmp_path: Path, nursery: trio.Nursery) -> None:
    from siptrio.app.config import load_config
    from siptrio.app.server import Server

    first, second = (trio.socket.socket(type=socket.SOCK_DGRAM) for _ in range(2))
    for collector in (first, second):
        await collector.bind(("127.0.0.1", 0))
    path = tmp_path / "capture.ini"

    def write(hep: str) -> None:
        path.write_text(
            "[sip]\nlisten_addr = 127.0.0.1\nudp_port = 0\ntcp_port = 0\n"
            "[sip_websocket]\nenable = false\n[admin]\nenable = false\n[control]\nenable = false\n"
            f"[registrar]\ndatabase = {tmp_path / 'db.sqlite'}\n[capture]\nhep = {hep}\n"
        )

    async def ping(server_udp: tuple[str, int]) -> None:
        c = await SipClient.connect("udp", *server_udp)
        assert (
            await c.request(c.build("OPTIONS", "sip:127.0.0.1", to="<sip:127.0.0.1>"))
        ).status == 200
        await c.aclose()

    write(f"udp:127.0.0.1:{first.getsockname()[1]}")
    server = Server(load_config(path))
    listeners = await nursery.start(server.run)
    udp = next((li.host, li.port) for li in listeners if li.transport is Transport.UDP)
    await ping(udp)
    with trio.fail_after(5):
        assert chunks(await first.recv(65535))[15].startswith(b"OPTIONS ")
    write(f"udp:127.0.0.1:{second.getsockname()[1]}")
    outcome = await server.reloader.reload("test")
    assert any(c.startswith("[capture] hep:") for c in outcome.changed)
    await ping(udp)
    with trio.fail_after(5):
        assert chunks(await second.recv(65535))[15].startswith(b"OPTIONS ")
    write("")
    await server.reloader.reload("test")
    before = server.stats["hep.sent"]
    await ping(udp)
    assert server.stats["hep.sent"] == before and not server.hub.trace  # no tap left
    first.close()
    second.close()
    nursery.cancel_scope.cancel()
