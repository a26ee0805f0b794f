"""The console: one message per line from standard input (terminal or pipe), replies on stdout.

On a terminal the live progress message is redrawn in place; on a pipe each update is a line,
so scripts and CI logs read naturally.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import threading
import time
from typing import TextIO

from chatops.adapter import Adapter, AdapterContext, Capabilities, Handler
from chatops.message import Conversation, Identity, Incoming, MessageRef, Reply


class ConsoleAdapter(Adapter):
    name = "console"
    capabilities = Capabilities(edit=True, images=False, buttons=False, max_text=100_000, local=True)

    def __init__(self, user: str, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
                 read_input: bool = True) -> None:  # fmt: skip
        self.user = user
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        self.read_input = read_input
        self.tty = self.out.isatty()
        self.eof = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._live_line: str | None = None  # message id of the line currently drawn with \r

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> ConsoleAdapter:
        return cls(ctx.settings.console.user)

    @property
    def identity(self) -> Identity:
        return Identity("console", self.user, self.user)

    @property
    def conversation(self) -> Conversation:
        return Conversation("console", self.user)

    def incoming(self, text: str) -> Incoming:
        return Incoming(text, self.identity, self.conversation, f"{os.getpid()}-{time.time_ns()}-{next(self._ids)}")

    async def start(self, handle: Handler) -> None:
        if self.read_input:
            self._task = asyncio.create_task(self._read(handle), name="console-input")

    async def _read(self, handle: Handler) -> None:
        # A daemon thread, not the default executor: a blocked readline must not hold up exit.
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        def pump() -> None:
            try:
                for line in iter(self.stdin.readline, ""):
                    loop.call_soon_threadsafe(lines.put_nowait, line)
            finally:
                loop.call_soon_threadsafe(lines.put_nowait, None)

        threading.Thread(target=pump, name="console-stdin", daemon=True).start()
        try:
            while (line := await lines.get()) is not None:
                if self.tty:
                    self._live_line = None  # the Enter key moved the cursor below the live line
                if line.strip():
                    await handle(self.incoming(line.rstrip("\n")))
        finally:
            self.eof.set()

    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        ref = MessageRef(conversation, str(next(self._ids)))
        self._write(ref.message_id, reply, new=True)
        return ref

    async def edit(self, ref: MessageRef, reply: Reply) -> MessageRef:
        self._write(ref.message_id, reply, new=False)
        return ref

    def _write(self, message_id: str, reply: Reply, *, new: bool) -> None:
        text = reply.text
        if reply.image is not None:
            text += f"\n  plot: {reply.image}"
        if reply.file is not None:
            text = f"{text}\n  file: {reply.file}" if text else f"  file: {reply.file}"
        if reply.live_key and self.tty:
            # Redraw the live line in place while it is the last thing on screen.
            if self._live_line is not None and self._live_line != message_id:
                self.out.write("\n")
            self.out.write("\r\x1b[2K" + text)
            self._live_line = message_id
        else:
            if self._live_line is not None:
                self.out.write("\n")
                self._live_line = None
            self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A remark of the command line itself (not a reply) on stderr, after ending any live line."""
        if self._live_line is not None:
            self.out.write("\n")
            self.out.flush()
            self._live_line = None
        print(text, file=sys.stderr, flush=True)

    async def stop(self) -> None:
        if self._live_line is not None:
            self.out.write("\n")
            self.out.flush()
        if self._task:
            self._task.cancel()
