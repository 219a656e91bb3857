"""Per-session state of the app's running jobs: the cancel flag the pipeline reads between steps, and the newest
live preview image, which the page polls for (a gr.Timer) while its generation runs.

The preview is polled rather than yielded by the generation handler: a yielding handler turns Gradio's progress
bar off after its first yield, and would change the handler's API answers."""

from __future__ import annotations

import threading

import gradio as gr
import numpy as np


class CancelFlags:
    """One flag per browser session, read by the pipeline between steps (Gradio cannot stop a running thread)."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            self._flags[session] = flag = threading.Event()
        return flag

    def finish(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]

    def cancel(self, session: str) -> bool:
        with self._lock:
            flag = self._flags.get(session)
        if flag is not None:
            flag.set()
        return flag is not None


class LivePreviews:
    """The newest preview image of each session's running generation, taken once by the page's poll, and the
    events that show it in the video's place: on from the click (the job may wait in the queue), off when the
    job is over (done, failed or cancelled)."""

    def __init__(self) -> None:
        self._images: dict[str, np.ndarray | None] = {}  # a session with a job waiting or running: its new image
        self._lock = threading.Lock()

    def begin(self, session: str) -> None:
        """The session's job is on its way (it may wait in the queue): polls now wait for its images."""
        with self._lock:
            self._images[session] = None

    def show(self, session: str, image: np.ndarray) -> None:
        with self._lock:
            if session in self._images:  # not after end(): a late step of a cancelled job shows nothing
                self._images[session] = image

    def end(self, session: str) -> None:
        with self._lock:
            self._images.pop(session, None)

    def take(self, session: str) -> np.ndarray | None:
        """The session's newest image not taken yet, or None."""
        with self._lock:
            image = self._images.get(session)
            if image is not None:
                self._images[session] = None
            return image

    def start_on(self, button: gr.Button, timer: gr.Timer) -> gr.events.Dependency:
        """The click that starts a job: the preview's polling first; chain the job after it with .then()."""
        def on(request: gr.Request):
            self.begin(request.session_hash)
            return gr.Timer(active=True)

        return button.click(on, None, [timer], api_visibility="private", queue=False)

    def attach(self, timer: gr.Timer, image: gr.Image, image_box: gr.Column, video_box: gr.Column,
               jobs: list[gr.events.Dependency], cancel: gr.events.Dependency) -> None:
        """Show each new image in the video's place while a job runs; the video again when it is over."""
        shown = [image, image_box, video_box]

        def tick(request: gr.Request):
            new = self.take(request.session_hash)
            if new is None:
                return gr.skip(), gr.skip(), gr.skip()
            return new, gr.Column(visible=True), gr.Column(visible="hidden")

        def off(request: gr.Request):
            self.end(request.session_hash)  # a job cancelled while it waited never ran: it ends here
            return gr.Timer(active=False), None, gr.Column(visible=False), gr.Column(visible=True)

        private = {"api_visibility": "private", "queue": False}
        for job in [*jobs, cancel]:
            job.then(off, None, [timer, *shown], **private)
        timer.tick(tick, None, shown, show_progress="hidden", **private)
