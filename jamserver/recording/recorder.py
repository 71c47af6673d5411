"""Headless jam client: join a room over the WebSocket, drive timed prompts, record what arrives.

`JamClient` is the connection (join, send, receive); `Recorder` runs one recording session on it,
writing through `jamserver.recording.files.RecordingFiles` so a recording cut short stays playable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from jamserver.jam import protocol
from jamserver.recording.files import (
    PromptSchedule,
    RecordingFiles,
    Report,
    describe_clip,
)


class JoinRefused(Exception):
    """The server refused the join; `code` and `message` are its error frame's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ServerGone(Exception):
    """The server could not be reached, or closed the connection."""


def websocket_url(url: str) -> str:
    """`ws://HOST:PORT` (or http, wss, https) -> the server's WebSocket endpoint, `/ws` unless a path is given."""
    parts = urlsplit(url)
    scheme = {"ws": "ws", "http": "ws", "wss": "wss", "https": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"url must look like ws://HOST:PORT, got {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class JamClient:
    """One member connection: join, send messages, read frames. Closed connections raise ServerGone."""

    def __init__(self, url: str, *, open_timeout: float = 10.0) -> None:
        self.url = websocket_url(url)
        self.open_timeout = open_timeout
        self.welcome: dict[str, Any] | None = None
        self._ws: ClientConnection | None = None

    async def connect(self) -> None:
        try:
            self._ws = await connect(self.url, max_size=None, open_timeout=self.open_timeout)
        except (OSError, InvalidHandshake, InvalidURI, asyncio.TimeoutError) as error:
            raise ServerGone(f"cannot reach {self.url}: {error or type(error).__name__}") from None

    async def join(self, room: str | None = None, token: str | None = None, *,
                   then: Sequence[protocol.ClientMessage] = ()) -> dict[str, Any]:
        """Join `room` (host with its `token`) or create one; the welcome frame, or JoinRefused.

        `then` is sent right behind the join, before the welcome comes back, so a first prompt
        reaches a new room before it plans its first clip.
        """
        for message in (protocol.Join(room=room, token=token, protocol=protocol.PROTOCOL_VERSION), *then):
            await self.send(message)
        try:
            frame = await asyncio.wait_for(self._join_reply(), self.open_timeout)
        except asyncio.TimeoutError:
            raise ServerGone(f"{self.url} sent no welcome within {self.open_timeout:g} s") from None
        if frame["type"] == "error":
            raise JoinRefused(str(frame.get("code")), str(frame.get("message")))
        self.welcome = frame
        return frame

    async def _join_reply(self) -> dict[str, Any]:
        while (frame := await self.receive())["type"] not in ("welcome", "error"):
            pass
        return frame

    @property
    def connection(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("connect() first")
        return self._ws

    async def send(self, message: protocol.ClientMessage) -> None:
        try:
            await self.connection.send(protocol.encode(protocol.client_message_to_wire(message)))
        except ConnectionClosed as error:
            raise ServerGone(f"the server closed the connection ({error})") from None

    async def receive(self) -> dict[str, Any]:
        """The next server frame."""
        try:
            data = await self.connection.recv()
        except ConnectionClosed as error:
            raise ServerGone(f"the server closed the connection ({error})") from None
        if isinstance(data, str):
            raise ServerGone("the server sent a text frame; is this a jamserver /ws endpoint?")
        return protocol.decode(data)

    async def close(self) -> None:
        if self._ws is not None:
            ws, self._ws = self._ws, None
            try:
                await asyncio.wait_for(ws.close(), timeout=5)
            except (OSError, asyncio.TimeoutError):
                pass


@dataclass(frozen=True)
class RecordingResult:
    ended: str  # one of ENDINGS
    clips: int
    seconds: float
    detail: str = ""


def recording_info(welcome: Mapping[str, Any], url: str) -> dict[str, Any]:
    """Timeline header from the welcome (never the control token: timelines get shared)."""
    return {"source": "record", "url": url, "room": welcome.get("room"), "role": welcome.get("role"),
            "model": welcome.get("model"), "settings": welcome.get("settings")}


class Recorder:
    """Join a room, send timed prompts, write clips until `duration` stream seconds have arrived."""

    def __init__(self, client: JamClient, files: RecordingFiles, *, duration: float,
                 schedule: PromptSchedule | None = None, timeout: float | None = None,
                 report: Report | None = None, seed_image_id: str | None = None) -> None:
        if not duration > 0:
            raise ValueError(f"duration must be a positive number of seconds, got {duration}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        self.client = client
        self.files = files
        self.duration = float(duration)
        self.schedule = schedule or PromptSchedule()
        # by default, room for a server twice slower than real time plus its start-up
        self.timeout = timeout if timeout is not None else 2.0 * duration + 120.0
        self.report = report or (lambda line: None)
        self.seed_image_id = seed_image_id  # set as the room's seed right behind the join (as host)

    async def run(self, *, room: str | None = None, token: str | None = None,
                  stop: asyncio.Event | None = None) -> RecordingResult:
        """Record; raises JoinRefused or ServerGone before any file is created, else always finishes files."""
        stop = stop or asyncio.Event()
        opening = self.schedule.due(0.0)
        first: list[protocol.ClientMessage] = []
        if self.seed_image_id is not None:
            first.append(protocol.SettingsMessage(seed_image_id=self.seed_image_id))
        await self.client.connect()
        try:
            welcome = await self.client.join(room, token, then=[*first, *(timed.prompt for timed in opening)])
            if self.seed_image_id is not None and self.seed_image_id not in welcome.get("seed_images", []):
                raise JoinRefused("unknown_seed_image", f"the server has no seed image {self.seed_image_id!r} "
                                                        f"(it has {', '.join(welcome.get('seed_images', []))})")
        except BaseException:
            await self.client.close()
            raise
        self.report(f"joined room {welcome['room']} as {welcome['role']} "
                    f"(model {welcome['model']['checkpoint']} on {welcome['model']['device']})")
        for timed in opening:
            self.report(f"prompt at 0.0 s: {timed.prompt.prompt!r}")
        self.files.open(recording_info(welcome, self.client.url))
        ended, detail = "failed", ""
        try:
            ended = await self._record(stop)
        except ServerGone as error:
            ended, detail = "server_gone", str(error)
        except (asyncio.CancelledError, KeyboardInterrupt):
            ended = "interrupted"
            raise
        finally:
            for note in self.files.finish(ended):
                self.report(note)
            await self.client.close()
        timeline = self.files.timeline
        return RecordingResult(ended, len(timeline.entries), timeline.recorded_seconds, detail)

    async def _record(self, stop: asyncio.Event) -> str:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.ensure_future(stop.wait())
        receiving = asyncio.ensure_future(self.client.receive())
        try:
            while True:
                elapsed = loop.time() - started
                for timed in self.schedule.due(elapsed):
                    await self.client.send(timed.prompt)
                    self.report(f"prompt at {elapsed:.1f} s: {timed.prompt.prompt!r}")
                if self.files.timeline.recorded_seconds >= self.duration - 1e-6:
                    return "duration"
                if stop.is_set():
                    return "interrupted"
                if elapsed >= self.timeout:
                    return "timeout"
                wake = min(self.timeout - elapsed, self.schedule.seconds_until_next(elapsed))
                done, _ = await asyncio.wait({receiving, stopping}, timeout=wake,
                                             return_when=asyncio.FIRST_COMPLETED)
                if receiving in done:
                    self._handle(receiving.result())
                    receiving = asyncio.ensure_future(self.client.receive())
        finally:
            for task in (receiving, stopping):
                task.cancel()
            await asyncio.gather(receiving, stopping, return_exceptions=True)

    def _handle(self, frame: Mapping[str, Any]) -> None:
        if frame["type"] == "clip":
            entry = self.files.add_clip(frame)
            if entry is not None:
                self.report(describe_clip(entry))
        elif frame["type"] == "error":
            self.report(f"server: {frame.get('code')}: {frame.get('message')}")
        elif frame["type"] == "settings":
            settings = frame.get("settings") or {}
            self.report(f"room settings: seed image {settings.get('seed_image_id')}, "
                        f"{settings.get('num_inference_steps')} steps, denoising {settings.get('denoising')}")

