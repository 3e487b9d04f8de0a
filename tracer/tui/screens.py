"""The two pop-up screens: detail of one row (Enter) and the key list (?)."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from tracer.safe_text import printable


class _Popup(ModalScreen):
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("q", "dismiss", "Close", show=False),
        Binding("enter", "dismiss", "Close", show=False),
        Binding("question_mark", "dismiss", "Close", show=False),
    ]

    def __init__(self, title: str, body: Text):
        super().__init__()
        self._title = title
        self._body = body

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="popup") as box:
            # title: already display-safe text (details.detail_title). A str would
            # be parsed as markup ("[/x]" raises); Content is taken literally.
            box.border_title = Content(self._title)
            box.border_subtitle = "Esc closes"
            yield Static(self._body, classes="popup-body")

    async def action_dismiss(self, result=None) -> None:
        self.dismiss(result)


class DetailScreen(_Popup):
    """Everything about one row, as it was when Enter was pressed."""


class HelpScreen(_Popup):
    """Where the data comes from (with every blind spot of the backend) and every
    key, from the app's own bindings, so it cannot fall out of date."""

    def __init__(self, entries: list[tuple[str, str]]):
        body = Text()
        width = max(len(k) for k, _ in entries) + 2
        for key, description in entries:
            if not key:     # a heading
                body.append(f"\n{printable(description)}\n", style="bold underline")
                continue
            body.append(f"  {key:<{width}}", style="bold cyan")
            # descriptions include the source: host, kernel, recording path
            body.append(printable(description) + "\n")
        super().__init__("connscope help", body)
