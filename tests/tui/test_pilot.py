"""The monitor against a real running siptrio: rows appear, calls move, kicks work, reconnects."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from support.client import SipClient
from support.tui_rig import Siptrio, TrioThread
from support.ua import UA

from tui.app import MonitorApp


async def until(pilot, condition: Callable[[], bool], timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def register(siptrio: Siptrio, user: str) -> None:
    async def go() -> None:
        c = await SipClient.connect("udp", *siptrio.udp)
        r = await c.request(c.register(user, expires=600))
        assert r.status == 200

    TrioThread(go).join()


def table_text(app: MonitorApp, table_id: str) -> str:
    table = app.query_one(table_id)
    return "\n".join(" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count))  # type: ignore[attr-defined]


def test_registration_appears_and_kick_removes_it(siptrio: Siptrio) -> None:
    async def scenario() -> None:
        app = MonitorApp(siptrio.socket, retry=0.2)
        async with app.run_test(size=(150, 40)) as pilot:
            await until(pilot, lambda: app.connected)
            register(siptrio, "alice")
            await until(
                pilot, lambda: "sip:alice@example.com" in table_text(app, "#bindings-table")
            )
            assert "UDP" in table_text(app, "#bindings-table")
            register(siptrio, "bob")
            await until(pilot, lambda: app.query_one("#bindings-table").row_count == 2)  # type: ignore[attr-defined]
            table = app.query_one("#bindings-table")
            table.focus()
            await pilot.press("down")  # select bob (rows are sorted by AOR)
            await pilot.press("k")
            await pilot.pause(0.2)
            await pilot.press("y")
            await until(pilot, lambda: "sip:bob@" not in table_text(app, "#bindings-table"))
            assert "sip:alice@example.com" in table_text(app, "#bindings-table")

    asyncio.run(scenario())


def test_call_moves_dialog_early_confirmed_terminated(siptrio: Siptrio) -> None:
    answer = threading.Event()
    ready = threading.Event()

    async def callee() -> None:
        ua = UA(await SipClient.connect("udp", *siptrio.udp), "bob")
        await ua.register()
        ready.set()
        invite = await ua.expect_request("INVITE", timeout=20)
        await ua.reply(invite, 180, "Ringing")
        while not answer.is_set():
            await __import__("trio").sleep(0.02)
        await ua.reply(invite, 200, "OK", body="v=0\r\n")
        await ua.expect_request("ACK")
        bye = await ua.expect_request("BYE", timeout=20)
        await ua.reply(bye, 200, "OK")

    async def scenario() -> None:
        side = TrioThread(callee)
        assert ready.wait(10)
        app = MonitorApp(siptrio.socket, retry=0.2)
        async with app.run_test(size=(150, 40)) as pilot:
            await until(pilot, lambda: app.connected)
            await pilot.press("c")  # the simulate-call form
            await pilot.pause(0.2)
            await pilot.click("#to")
            await pilot.press(*"bob")
            duration = app.screen.query_one("#duration")
            duration.value = "1"  # type: ignore[attr-defined]
            await pilot.click("#call")

            def state() -> str:
                return " ".join(d.get("state", "") for d in app.state.dialogs.values())

            await until(pilot, lambda: "early" in state())
            await pilot.press("2")
            await until(pilot, lambda: "early" in table_text(app, "#dialogs-table"))
            answer.set()
            await until(pilot, lambda: "confirmed" in table_text(app, "#dialogs-table"))
            await until(
                pilot, lambda: "terminated" in table_text(app, "#dialogs-table"), timeout=15
            )
            assert "simulator" in table_text(app, "#dialogs-table") or "caller" in table_text(
                app, "#dialogs-table"
            )
            # the ladder of that call shows the INVITE through siptrio
            app.query_one("#dialogs-table").focus()
            await pilot.press("l")
            await until(pilot, lambda: "INVITE" in str(app.query_one("#ladder-view").render()))
        side.join()

    asyncio.run(scenario())


def test_disconnected_then_reconnects(siptrio: Siptrio) -> None:
    async def scenario() -> None:
        app = MonitorApp(siptrio.socket, retry=0.2)
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: app.connected)
            await asyncio.to_thread(siptrio.stop)
            await until(pilot, lambda: not app.connected)
            status = str(app.query_one("#status").render())
            assert "disconnected, retrying" in status
            await asyncio.to_thread(siptrio.start)
            await until(pilot, lambda: app.connected, timeout=20)
            assert "connected to siptrio" in str(app.query_one("#status").render())

    asyncio.run(scenario())


def test_a_failed_invite_and_a_register_are_transactions_and_history(siptrio: Siptrio) -> None:
    """What sngrep would list: the REGISTER and a 404 INVITE, which leaves no dialog."""

    async def calls_nobody() -> None:
        c = await SipClient.connect("udp", *siptrio.udp)
        ua = UA(c, "alice")
        invite, _ = ua.invite("nobody")
        assert (await c.request(invite)).status == 404

    async def scenario() -> None:
        app = MonitorApp(siptrio.socket, retry=0.2)
        async with app.run_test(size=(170, 40)) as pilot:
            await until(pilot, lambda: app.connected)
            register(siptrio, "alice")
            TrioThread(calls_nobody).join()
            await until(pilot, lambda: "404 Not Found" in table_text(app, "#transactions-table"))
            rows = table_text(app, "#transactions-table")
            assert "REGISTER sip:alice@example.com sip:alice@example.com 200 OK" in rows
            assert "INVITE sip:alice@example.com sip:nobody@example.com 404 Not Found" in rows
            await until(pilot, lambda: "404 Not Found" in table_text(app, "#history-table"))
            assert "proxy" in table_text(app, "#history-table")

    asyncio.run(scenario())
