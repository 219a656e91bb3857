"""What the app tells the user about a request: errors that name the field and stay readable, without server paths.
(The per-session cancel flags live in jobs.py.)"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import gradio as gr

from alice_core.errors import AliceError


def whole_number(label: str, value, low: int, high: int) -> int:
    """A number field's value as an int, or an error that names the field and its range."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise AliceError(f"{label} must be a whole number from {low} to {high}, got {value!r}")
    return value


class ErrorNotes:
    """An error stays readable where the user acted: the handler raises it (API clients get it as an error, the
    browser a toast) and notes it, and the event's .failure() step writes it into the status block under the
    button, where it stays until the next action. Messages never show server paths."""

    def __init__(self, studio) -> None:  # a webui.studio.Studio
        self.studio = studio
        self._notes: dict[str, str] = {}

    def public(self, message: str) -> str:
        for folder, name in ((self.studio.models_dir, "models folder"), (self.studio.output_dir, "output folder")):
            message = message.replace(f"{folder}{os.sep}", "").replace(str(folder), f"the {name}")
        return message

    @contextlib.contextmanager
    def noted(self, request: gr.Request) -> Iterator[None]:
        self._notes.pop(request.session_hash, None)
        try:
            yield
        except AliceError as exc:
            message = self.public(str(exc))
            self._notes[request.session_hash] = message
            raise gr.Error(message, print_exception=False) from None

    def text(self, request: gr.Request):
        """The noted error for the status block; unchanged when there is none (a cancelled event also ends as
        failed, and Cancel has written its own message)."""
        message = self._notes.pop(request.session_hash, None)
        return gr.skip() if message is None else f"**Error:** {message}"

