"""The monitor's modal screens: the kick confirmation, the call form and the help page.

Each answers through ``dismiss`` and knows nothing of the control socket: the app
decides what to send with the answer. Their CSS lives with the app's (``MonitorApp.CSS``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

__all__ = ["HELP", "CallScreen", "ConfirmScreen", "HelpScreen"]


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS: ClassVar = [Binding("y", "yes", "Yes"), Binding("n,escape", "no", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, id="question")
            with Horizontal(id="buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    @on(Button.Pressed, "#yes")
    def action_yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def action_no(self) -> None:
        self.dismiss(False)


class CallScreen(ModalScreen[dict[str, Any] | None]):
    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("[b]Simulate a call[/b] from the built-in client")
            yield Label("To", classes="field")
            yield Input(placeholder="bob, bob@example.com or sip:bob@example.com", id="to")
            yield Label("Duration: seconds of talk after the answer", classes="field")
            yield Input(value="5", id="duration")
            yield Label("Answer timeout: seconds of ringing before CANCEL", classes="field")
            yield Input(value="30", id="answer_timeout")
            yield Label("", id="error")
            with Horizontal(id="buttons"):
                yield Button("Call", variant="success", id="call")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#call")
    @on(Input.Submitted)
    def submit(self) -> None:
        to = self.query_one("#to", Input).value.strip()
        try:
            duration = float(self.query_one("#duration", Input).value)
            answer_timeout = float(self.query_one("#answer_timeout", Input).value)
        except ValueError:
            self.query_one("#error", Label).update("duration and answer timeout are seconds")
            return
        if not to:
            self.query_one("#error", Label).update("who should be called?")
            return
        self.dismiss({"to": to, "duration": duration, "answer_timeout": answer_timeout})

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


HELP = """\
[b]siptrio-tui[/b]: a live view of a running siptrio

  [b]1[/b]..[b]6[/b]   bindings, dialogs, history, flows, transactions, ladder
  [b]/[/b]       filter rows by AOR, Call-ID or any text (Escape clears)
  [b]k[/b]       kick the selected binding (asks first)
  [b]c[/b]       simulate a call
  [b]l[/b]/Enter on a dialog, a call or a transaction: its SIP ladder
  [b]?[/b]       this help
  [b]q[/b]       quit

Press any key to close."""


class HelpScreen(ModalScreen[None]):
    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(HELP)

    def on_key(self) -> None:
        self.dismiss(None)
