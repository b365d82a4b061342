"""Drive headless Chromium through the DevTools protocol over a pipe (standard library only).

``--remote-debugging-pipe`` makes Chromium read NUL-terminated JSON commands on fd 3 and answer
on fd 4, so no WebSocket client or open port is needed.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--mute-audio", "--remote-debugging-pipe",
)


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium with one page; use as a context manager."""

    def __init__(self, executable: str | None = None, width: int = 1000, height: int = 800,
                 extra_flags: tuple[str, ...] = ()) -> None:
        self.executable = executable or find_chromium()
        self.extra_flags = tuple(extra_flags)
        if not self.executable:
            raise BrowserError("Chromium not found (Debian: apt-get install chromium)")
        self.width, self.height = width, height
        self._next_id = 0
        self._buf = b""
        self.console: list[str] = []  # page console messages and exceptions, for diagnostics

    def __enter__(self) -> "Chromium":
        self._profile = tempfile.TemporaryDirectory(prefix="mlx-bald-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_fds() -> None:  # in the child: Chromium expects the pipe on fds 3 and 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [self.executable, *CHROMIUM_FLAGS, *self.extra_flags,
             f"--user-data-dir={self._profile.name}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=wire_fds)
        os.close(to_child_r)
        os.close(from_child_w)
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime"):
            self.send(f"{domain}.enable", session=self.session)
        self.send("Emulation.setDeviceMetricsOverride", {
            "width": self.width, "height": self.height, "deviceScaleFactor": 1,
            "mobile": False}, session=self.session)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    # ---- protocol -----------------------------------------------------------------------
    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._note_event(reply)

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise BrowserError("Chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _note_event(self, event: dict) -> None:
        params = event.get("params", {})
        if event.get("method") == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                         for a in params.get("args", [])))
        elif event.get("method") == "Runtime.exceptionThrown":
            self.console.append(str(params.get("exceptionDetails", {}).get("text")))

    # ---- page helpers -------------------------------------------------------------------
    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, self.session, timeout)
        if "exceptionDetails" in res:
            raise BrowserError(f"page script failed: {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, self.session)

    def wait_for(self, expression: str, timeout: float, interval: float = 0.25) -> Any:
        """Poll ``expression`` until it is truthy; bounded by ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        raise BrowserError(f"timed out after {timeout:.0f} s waiting for {expression!r}")

    def set_file(self, selector: str, path: str | Path) -> None:
        root = self.send("DOM.getDocument", {}, self.session)["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector},
                         self.session)["nodeId"]
        if not node:
            raise BrowserError(f"no element matches {selector!r}")
        self.send("DOM.setFileInputFiles", {"files": [str(Path(path).resolve())], "nodeId": node},
                  self.session)

    def screenshot(self, out: str | Path, full_page: bool = True) -> Path:
        if full_page:  # fit the page's content, not the window
            height = int(self.evaluate("Math.ceil(document.body.getBoundingClientRect().bottom)"))
            self.send("Emulation.setDeviceMetricsOverride", {
                "width": self.width, "height": max(height, 200), "deviceScaleFactor": 1,
                "mobile": False}, session=self.session)
        data = self.send("Page.captureScreenshot", {"format": "png"}, self.session)["data"]
        out = Path(out)
        out.write_bytes(base64.b64decode(data))
        return out


_PAGE_READY = ("document.readyState === 'complete' && "
               "document.querySelectorAll('#model option').length > 0")
_FINISHED = ("document.getElementById('status').textContent.startsWith('Done') || "
             "document.getElementById('status').classList.contains('error')")  # the stream has ended
_SHOWN = """({
    text: document.getElementById('text').textContent,
    status: document.getElementById('status').textContent,
    error: document.getElementById('status').classList.contains('error'),
    segments: document.querySelectorAll('#segments tbody tr').length})"""


def transcribe_in_demo_page(url: str, audio_file: str | Path, screenshot: str | Path | None = None,
                            timeout: float = 300.0) -> dict:
    """Open the demo page at ``url``, upload ``audio_file``, press Transcribe and wait.

    Returns what the page shows: {"text", "status", "error", "segments"}; optionally saves a
    screenshot of the finished page.
    """
    with Chromium() as browser:
        browser.goto(url)
        browser.wait_for(_PAGE_READY, timeout=30)
        browser.set_file("#file", audio_file)
        browser.wait_for("!document.getElementById('send').disabled", timeout=10)
        browser.evaluate("document.getElementById('send').click()")
        browser.wait_for(_FINISHED, timeout=timeout)
        shown = browser.evaluate(_SHOWN)
        if screenshot is not None:
            browser.screenshot(screenshot)
        shown["console"] = list(browser.console)
        return shown


def record_in_demo_page(url: str, seconds: float = 1.5, timeout: float = 120.0) -> dict:
    """Press Record, wait, press Stop on the demo page, with Chromium's fake microphone (a
    beeping test signal): exercises MediaRecorder -> webm/opus -> in-browser WAV -> upload."""
    flags = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    with Chromium(extra_flags=flags) as browser:
        browser.goto(url)
        browser.wait_for(_PAGE_READY, timeout=30)
        browser.evaluate("document.getElementById('record').click()")
        browser.wait_for("document.getElementById('record').classList.contains('recording') "
                         "|| document.getElementById('status').classList.contains('error')",
                         timeout=10)
        time.sleep(seconds)
        browser.evaluate("document.getElementById('record').click()")
        browser.wait_for(_FINISHED, timeout=timeout)
        shown = browser.evaluate(_SHOWN)
        shown["console"] = list(browser.console)
        return shown
