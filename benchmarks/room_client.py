"""A benchmark's room member: one host connection reading every frame, following the room's playout clock.

It keeps the clips as they arrive and judges each against the playhead the frames report: a cut-in arriving after
members passed its first MP3 frame is late, a clip arriving after members ran out of audio is an underrun.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect

from jamserver.jam import protocol
from tests.server_support import ServerProcess

MP3_FRAME_LEAD = 0.1  # a cut's MP3 frames start up to ~4 frames before its stream time


@dataclass(frozen=True)
class ReceivedClip:
    seq: int
    stream_time: float
    duration: float
    alpha: float
    end_prompt: str
    gen_seconds: float
    arrived: float  # time.monotonic() on the client
    replaces: bool = False


class PlayoutEstimate:
    """The room's playhead as the frames report it: each frame's `playhead` plus the time since it arrived.

    Taking the largest estimate discards frames that were delayed (catch-up clips, a slow moment), which can only
    report an older playhead. The clock never passes the end of the audio received (members wait there), and a
    room that ran dry or paused held its clock, so the estimate starts over from the next frame then.
    """

    def __init__(self) -> None:
        self._offset: float | None = None  # playhead - arrival time
        self.audio_until = 0.0  # stream time up to which clips have arrived

    def observe(self, playhead: float | None, arrived: float) -> None:
        if playhead is None:  # the room's clock has not started: nothing to follow yet
            return
        offset = playhead - arrived
        self._offset = offset if self._offset is None else max(self._offset, offset)

    def restart(self) -> None:
        self._offset = None

    def audio_arrived(self, stream_end: float, arrived: float) -> None:
        """A clip's audio ends at `stream_end`: if members had run out of audio before it came, the clock stood."""
        playhead = self.at(arrived)
        if playhead is not None and playhead >= self.audio_until:
            self.restart()
        self.audio_until = stream_end

    def at(self, now: float) -> float | None:
        return None if self._offset is None else min(self._offset + now, self.audio_until)


class RoomClient:
    """One host connection that reads every frame as it arrives, keeps the clips and follows the playout clock."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.clips: list[ReceivedClip] = []
        self.room: str | None = None  # from the welcome
        self.errors: list[str] = []
        self.clock = PlayoutEstimate()
        self.late_cuts = 0
        self.underruns = 0
        self.misses: list[str] = []  # what each late cut or underrun was: seq, stream time, playhead then
        self._new_clip = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, server: ServerProcess, timeout: float = 30.0) -> RoomClient:
        websocket = await asyncio.wait_for(connect(server.ws_url, max_size=None), timeout)
        await websocket.send(protocol.encode({"type": "join", "protocol": protocol.PROTOCOL_VERSION}))
        return cls(websocket)

    async def _read(self) -> None:
        async for data in self.websocket:
            arrived = time.monotonic()
            frame = protocol.decode(data)
            if frame["type"] == "welcome":
                self.room = frame["room"]
            if frame["type"] == "error":
                self.errors.append(f"{frame['code']}: {frame['message']}")
            if frame["type"] == "state":
                self._follow_state(frame, arrived)
            if frame["type"] != "clip":
                continue
            clip = ReceivedClip(frame["seq"], frame["stream_time"], frame["duration"], frame["alpha"],
                                frame["end"]["prompt"], frame["gen_seconds"], arrived, bool(frame.get("replaces")))
            self._judge(clip)
            self.clock.audio_arrived(clip.stream_time + clip.duration, arrived)
            self.clock.observe(frame["playhead"], arrived)
            async with self._new_clip:
                self.clips.append(clip)
                self._new_clip.notify_all()

    def _follow_state(self, frame: dict, arrived: float) -> None:
        if frame["behind"] or frame["paused"]:  # the room's clock stands: start the estimate over
            self.clock.restart()
        self.clock.observe(frame["playhead"], arrived)

    def _judge(self, clip: ReceivedClip) -> None:
        """A cut is late when members are already past its first MP3 frame; a clip is an underrun when members had
        played all the audio before it (the playhead estimate never passes the audio received)."""
        playhead = self.clock.at(clip.arrived)
        if playhead is None or not self.clips:  # the first clip starts the room's clock: nothing ran dry before it
            return
        if clip.replaces and clip.stream_time - MP3_FRAME_LEAD < playhead:
            self.late_cuts += 1
        elif not clip.replaces and playhead >= clip.stream_time - 1e-3:
            self.underruns += 1
        else:
            return
        self.misses.append(f"{'cut' if clip.replaces else 'clip'} {clip.seq} at {clip.stream_time:.2f} s arrived with "
                           f"the playhead at {playhead:.2f} s")

    async def wait_for_clips(self, count: int, timeout: float) -> bool:
        """True once `count` clips have arrived; False if `timeout` passed first."""
        async with self._new_clip:
            try:
                await asyncio.wait_for(self._new_clip.wait_for(lambda: len(self.clips) >= count), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def send_prompt(self, prompt: str) -> None:
        await self.websocket.send(protocol.encode({"type": "prompt", "prompt": prompt}))

    async def close(self) -> None:
        await self.websocket.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
