"""``siptrio-tui``: a live Textual monitor of a running siptrio, over its control socket.

The app is a pure consumer of the control socket (docs/control-protocol.md): a
snapshot on connect, then events, folded into ``MonitorState`` and drawn into tables
whose rows are updated in place (no flicker, the selection stays). When the server
goes away the screen says so and the app keeps retrying; it never shows a traceback.

This module owns the layout, the connection loop, the drawing into widgets and the
keys; what a row shows is ``rows.py``, the modal screens (kick, call form, help) are
``screens.py``, the socket is ``client.py``, the model ``state.py``, the ladder ``ladder.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import (
    DataTable,
    Footer,
    Input,
    Label,
    ListItem,
    ListView,
    Static,
    TabbedContent,
    TabPane,
)

from .client import ControlClient, Disconnected
from .ladder import build_ladder
from .rows import (
    BINDING_COLUMNS,
    DIALOG_COLUMNS,
    FLOW_COLUMNS,
    HISTORY_COLUMNS,
    TABLES,
    TRANSACTION_COLUMNS,
    binding_rows,
    dialog_cells,
    flow_cells,
    history_rows,
    summary_text,
    transaction_rows,
)
from .screens import CallScreen, ConfirmScreen, HelpScreen
from .state import MonitorState

__all__ = ["MonitorApp", "main"]

RETRY_SECONDS = 1.0
NO_LADDER = "Select a dialog (2), a call (3) or a transaction (5) and press l."


def default_socket(config: str | None) -> str:
    """The socket path exactly as the server finds it."""
    from siptrio.app.config import load_config

    return load_config(config).control.socket


class MonitorApp(App[None]):
    TITLE = "siptrio"
    CSS = """
    #status { height: 1; background: $boost; }
    #status.down { background: $error; color: $text; }
    #summary { height: 3; }
    #filter { display: none; }
    #filter.shown { display: block; }
    #ladder-box { height: 1fr; }
    #ladder { width: auto; }
    #message { height: 1fr; border-top: solid $primary; }
    #messages { height: 8; }
    ModalScreen { align: center middle; }
    #dialog { width: 64; height: auto; padding: 1 2; border: thick $primary; background: $surface; }
    #dialog .field { margin-top: 1; color: $text-muted; }
    #buttons { height: auto; margin-top: 1; }
    #buttons Button { margin-right: 2; }
    """
    BINDINGS: ClassVar = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("slash", "filter", "Filter"),
        Binding("k", "kick", "Kick"),
        Binding("c", "call", "Call"),
        Binding("l", "ladder", "Ladder"),
        Binding("1", "tab('bindings')", "Bindings", show=False),
        Binding("2", "tab('dialogs')", "Dialogs", show=False),
        Binding("3", "tab('history')", "History", show=False),
        Binding("4", "tab('flows')", "Flows", show=False),
        Binding("5", "tab('transactions')", "Transactions", show=False),
        Binding("6", "tab('ladder')", "Ladder", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(
        self, socket_path: str, *, retry: float = RETRY_SECONDS, clock: Any = time.time
    ) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.retry = retry
        self.clock = clock
        self.state = MonitorState()
        self.connected = False
        self.client: ControlClient | None = None
        self.filter_text = ""
        self.ladder_call: str | None = None
        self.ladder_node: str | None = None  # another node's dialog: no trace here
        self.status_text = "connecting"
        self.last_error: str | None = None
        self._trace_dirty = False

    # --- layout -----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("", id="status")
        yield Static("", id="summary")
        yield Input(
            placeholder="filter rows by AOR, Call-ID or any text (Escape clears)", id="filter"
        )
        with TabbedContent(initial="bindings", id="tabs"):
            with TabPane("Bindings", id="bindings"):
                yield DataTable(id="bindings-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Dialogs", id="dialogs"):
                yield DataTable(id="dialogs-table", cursor_type="row", zebra_stripes=True)
            with TabPane("History", id="history"):
                yield DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Flows", id="flows"):
                yield DataTable(id="flows-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Transactions", id="transactions"):
                yield DataTable(id="transactions-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Ladder", id="ladder"):
                with VerticalScroll(id="ladder-box"):
                    yield Static(NO_LADDER, id="ladder-view")
                yield ListView(id="messages")
                with VerticalScroll(id="message"):
                    yield Static("", id="message-text")
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (
            ("#bindings-table", BINDING_COLUMNS),
            ("#dialogs-table", DIALOG_COLUMNS),
            ("#history-table", HISTORY_COLUMNS),
            ("#flows-table", FLOW_COLUMNS),
            ("#transactions-table", TRANSACTION_COLUMNS),
        ):
            table = self.query_one(table_id, DataTable)
            for label, key in columns:
                table.add_column(label, key=key)
        self.query_one("#filter", Input).disabled = True  # hidden until / is pressed
        self.query_one("#bindings-table", DataTable).focus()
        self.show_status()
        self.draw_summary()  # at once, not at the first tick: a monitor that never connects
        self.set_interval(1.0, self.tick)
        self.connect_loop()

    # --- the connection -----------------------------------------------------------------

    @work(exclusive=True, exit_on_error=False, group="connection")
    async def connect_loop(self) -> None:
        while True:
            client = ControlClient(self.socket_path)
            try:
                await client.connect()
                self.client = client
                await client.send("subscribe_trace", full=True)
                async for msg in client.messages():
                    if not self.connected and msg.get("type") == "snapshot":
                        self.connected = True
                        self.last_error = None
                    self.receive(msg)
            except Disconnected as e:
                self.last_error = str(e)
            except Exception as e:  # never let a surprise kill the monitor
                self.last_error = f"{type(e).__name__}: {e}"
            finally:
                self.client = None
                await client.close()
            self.connected = False
            self.show_status()
            await asyncio.sleep(self.retry)

    def receive(self, msg: dict[str, Any]) -> None:
        changed = self.state.apply(msg, self.clock())
        if changed == "snapshot":
            self.redraw_all()
        elif changed == "bindings":
            self.draw_bindings()
            self.draw_flows()  # a flow's bindings are the bindings made over it
            self.draw_summary()
        elif changed == "dialogs":
            self.draw_dialogs()
            self.draw_summary()
        elif changed == "flows":
            self.draw_flows()
            self.draw_summary()
        elif changed == "counters":
            self.draw_summary()
        elif changed == "cluster":
            self.draw_summary()
            self.draw_dialogs()
            self.draw_flows()
        elif changed == "history":
            self.draw_history()
        elif changed == "trace":
            self._trace_dirty = True  # drawn at the next tick: a busy server sends many
            if self.ladder_call and msg.get("call_id") == self.ladder_call:
                self.draw_ladder()
        elif msg.get("type") == "reply" and not msg.get("ok"):
            self.notify(str(msg.get("error") or "command failed"), severity="error")
        elif msg.get("type") == "reply" and msg.get("cmd") == "call":
            call = msg.get("call") or {}
            self.notify(f"calling {call.get('to')} ({call.get('call_id')})")

    # --- drawing ------------------------------------------------------------------------------

    def show_status(self) -> None:
        status = self.query_one("#status", Static)
        if self.connected:
            server = self.state.server
            status.update(
                f" connected to siptrio {server.get('version', '?')} on {self.socket_path}"
                + (f"  config {server['config']}" if server.get("config") else "")
            )
            status.remove_class("down")
        else:
            why = f" ({self.last_error})" if self.last_error else ""
            status.update(f" disconnected, retrying every {self.retry:g} s{why}")
            status.add_class("down")

    def redraw_all(self) -> None:
        self.show_status()
        self.draw_summary()
        self.draw_bindings()
        self.draw_dialogs()
        self.draw_history()
        self.draw_flows()
        self.draw_transactions()

    def draw_summary(self) -> None:
        self.query_one("#summary", Static).update(summary_text(self.state, self.clock()))

    def _matches(self, *values: Any) -> bool:
        if not self.filter_text:
            return True
        needle = self.filter_text.lower()
        return any(needle in str(v).lower() for v in values if v is not None)

    def _sync_with_nodes(
        self,
        table: DataTable,
        own: dict[str, dict[str, Any]],
        remote: dict[str, dict[str, Any]],
        cells: Callable[[dict[str, Any], str | None], list[Any] | None],
    ) -> None:
        """Our rows, then the other nodes' (in a cluster, with a Node column added once).

        ``cells`` gives a row's cells, or None when the filter hides it.
        """
        node = self.state.node
        if node and "node" not in {c.key.value for c in table.columns.values()}:
            table.add_column("Node", key="node", default="")
        rows = {}
        for key, item, holder in [
            *((k, v, node) for k, v in own.items()),
            *((k, v, v.get("node")) for k, v in remote.items()),
        ]:
            row = cells(item, holder)
            if row is not None:
                rows[key] = [*row, holder or ""] if node else row
        self._sync(table, rows)

    def _sync(self, table: DataTable, rows: dict[str, list[Any]]) -> None:
        """Update rows in place, add new ones, remove gone ones: selection stays put."""
        current = {str(k.value) for k in table.rows}
        for key in current - rows.keys():
            table.remove_row(key)
        columns = [c.key for c in table.columns.values()]
        for key, cells in rows.items():
            if key in current:
                for column, value in zip(columns, cells, strict=True):
                    table.update_cell(key, column, value)
            else:
                table.add_row(*cells, key=key)

    def draw_bindings(self) -> None:
        rows = binding_rows(self.state, self.clock(), self._matches)
        self._sync(self.query_one("#bindings-table", DataTable), rows)

    def draw_dialogs(self) -> None:
        now = self.clock()

        def cells(d: dict[str, Any], node: str | None) -> list[Any] | None:
            return dialog_cells(d, node, now, self._matches)

        table = self.query_one("#dialogs-table", DataTable)
        self._sync_with_nodes(table, self.state.dialogs, self.state.remote_dialogs, cells)

    def draw_history(self) -> None:
        """Ended calls, newest first: when each started and how it ended."""
        rows, started = history_rows(self.state, self._matches)
        table = self.query_one("#history-table", DataTable)
        self._sync(table, rows)
        table.sort("call_id", key=lambda call_id: started.get(call_id, 0.0), reverse=True)

    def draw_transactions(self) -> None:
        """Every traced Call-ID (REGISTER, OPTIONS, MESSAGE, failed INVITEs too) in the
        order they began, as sngrep lists them: a new one comes at the bottom."""
        self._trace_dirty = False
        rows, first = transaction_rows(self.state, self._matches)
        table = self.query_one("#transactions-table", DataTable)
        self._sync(table, rows)
        table.sort("call_id", key=lambda call_id: first.get(call_id, 0.0))

    def draw_flows(self) -> None:
        now = self.clock()

        def cells(f: dict[str, Any], node: str | None) -> list[Any] | None:
            return flow_cells(self.state, f, node, now, self._matches)

        table = self.query_one("#flows-table", DataTable)
        self._sync_with_nodes(table, self.state.flows, self.state.remote_flows, cells)

    def draw_ladder(self) -> None:
        view = self.query_one("#ladder-view", Static)
        messages_view = self.query_one("#messages", ListView)
        if not self.ladder_call:
            view.update(NO_LADDER)
            return
        messages = self.state.messages_for(self.ladder_call)
        if not messages and self.ladder_node:
            view.update(
                f"{self.ladder_call} is held by node {self.ladder_node}: its SIP messages "
                "are traced on that node's control socket."
            )
            return
        if not messages:
            view.update(f"No SIP messages seen for {self.ladder_call} since the monitor connected.")
            return
        ladder = build_ladder(messages)
        view.update("\n".join(ladder.render(self.size.width)))
        if len(messages_view) != len(messages):
            messages_view.clear()
            for m in messages:
                messages_view.append(
                    ListItem(Label(f"{m.direction:4} {m.transport} {m.peer}  {m.first_line}"))
                )

    @on(ListView.Highlighted, "#messages")
    def show_message(self, event: ListView.Highlighted) -> None:
        if not self.ladder_call or event.list_view.index is None:
            return
        messages = self.state.messages_for(self.ladder_call)
        index = event.list_view.index
        if 0 <= index < len(messages):
            self.query_one("#message-text", Static).update(
                Text(messages[index].text or messages[index].first_line)
            )

    def tick(self) -> None:
        if self.state.retire_dialogs(self.clock()):
            self.draw_history()
        self.draw_summary()
        self.draw_bindings()  # expires counting down
        self.draw_dialogs()  # durations ticking
        self.draw_flows()  # ages growing
        if self._trace_dirty:
            self.draw_transactions()

    # --- actions ----------------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.disabled = False
        box.add_class("shown")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        box.disabled = True
        self.filter_text = ""
        self.redraw_all()
        self._focus_active_table()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.redraw_all()

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        self._focus_active_table()

    def _focus_active_table(self) -> None:
        active = self.query_one("#tabs", TabbedContent).active
        table = TABLES.get(active)
        if table:
            self.query_one(table, DataTable).focus()

    @on(TabbedContent.TabActivated)
    def tab_changed(self) -> None:
        self._focus_active_table()

    def _selected(self, table_id: str) -> str | None:
        table = self.query_one(table_id, DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return str(row_key.value) if row_key.value is not None else None

    def action_kick(self) -> None:
        key = self._selected("#bindings-table")
        binding = self.state.bindings.get(key or "")
        if binding is None:
            self.notify("select a binding in the Bindings tab first", severity="warning")
            return

        async def decided(yes: bool | None) -> None:
            if yes and self.client is not None:
                try:
                    await self.client.send("kick", aor=binding["aor"], contact=binding["contact"])
                except Disconnected as e:
                    self.notify(str(e), severity="error")

        self.push_screen(ConfirmScreen(f"Kick {binding['contact']}\nof {binding['aor']}?"), decided)

    def action_call(self) -> None:
        async def chosen(form: dict[str, Any] | None) -> None:
            if form and self.client is not None:
                try:
                    await self.client.send("call", **form)
                except Disconnected as e:
                    self.notify(str(e), severity="error")

        self.push_screen(CallScreen(), chosen)

    @on(DataTable.RowSelected, "#dialogs-table")
    @on(DataTable.RowSelected, "#history-table")
    @on(DataTable.RowSelected, "#transactions-table")
    def dialog_chosen(self) -> None:
        self.action_ladder()

    def action_ladder(self) -> None:
        active = self.query_one("#tabs", TabbedContent).active
        table = {"history": "#history-table", "transactions": "#transactions-table"}.get(
            active, "#dialogs-table"
        )
        key = self._selected(table)
        if key is None:
            self.notify("select a dialog, a call or a transaction first", severity="warning")
            return
        if active == "transactions":
            self.ladder_call, self.ladder_node = key, None
        else:
            remote = self.state.remote_dialogs.get(key)
            dialog = (
                self.state.dialogs.get(key)
                or remote
                or next((d for d in self.state.history if d["id"] == key), None)
            )
            if dialog is None:
                return
            self.ladder_call = dialog.get("call_id")
            self.ladder_node = remote.get("node") if remote is not None else None
        self.query_one("#messages", ListView).clear()
        self.draw_ladder()
        self.action_tab("ladder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="siptrio-tui", description="Live monitor of a running siptrio"
    )
    parser.add_argument("--socket", metavar="PATH", help="the server's control socket")
    parser.add_argument("--config", metavar="FILE", help="find the socket the way this config says")
    args = parser.parse_args(argv)
    try:
        path = args.socket or default_socket(args.config)
    except Exception as e:
        print(f"siptrio-tui: {e}")
        return 2
    MonitorApp(path).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
