"""Front-end faults with real processes: the owning front-end SIGKILLed, Redis restarted, a relaying front-end
SIGSTOPped past the out stream's cap.

What a listener would notice if these broke: the stream stopping for good (or repeating or skipping clips) when the
machine running the room dies, a host who cannot steer any more after reconnecting, a cluster that needs a manual
restart after Redis did, or a minute of stale clips played back after a stall instead of the live stream.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import redis

from jamserver.cluster.keys import RoomKeys
from jamserver.cluster.lease import DEFAULT_LEASE_SECONDS
from jamserver.cluster.relay import WATCH_SECONDS
from tests.cluster_support import Member, lease_holder, running_cluster, until
from tests.server_support import metric

pytestmark = pytest.mark.slow

CLIP_WAIT = 60.0  # generous: a clip is due every 5.12 s, but the machine is shared


NINE_BEAT_SEED = "marim"  # 9 beats a 5.12 s loop in bars of 3 (seed_images/index.json): only the loop start is on the
SEED_BEAT = 5.12 / 9  # 8-beat default grid a seed without a tempo gets (whose bars of 2.56 s a 6-beat seed shares)


def on_grid(offset: float, beat: float) -> bool:
    return abs(offset / beat - round(offset / beat)) < 1e-3


def steady(clips: list[dict]) -> bool:
    """Two clips after the takeover's, the last sent more than 3 s before it plays (generation keeps up again)."""
    marked = [index for index, clip in enumerate(clips) if clip.get("discontinuity")]
    return bool(marked) and len(clips) - marked[0] > 2 and clips[-1]["stream_time"] - clips[-1]["playhead"] > 3.0


def contiguous(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_the_owning_front_end_sigkilled_the_room_moves_and_its_stream_goes_on(redis_server, tmp_path):
    with running_cluster(redis_server.url, ("fa", "fb"), log_dir=tmp_path) as servers:
        a, b = servers["fa"], servers["fb"]
        client = redis.Redis.from_url(redis_server.url)

        async def scenario():
            host = await Member.join(a)
            room, token = host.welcome["room"], host.welcome["token"]
            await host.send(type="settings", seed_image_id=NINE_BEAT_SEED)
            await host.send(type="prompt", prompt="church bells")
            listener = await Member.join(b, room=room)
            await until(lambda: len(listener.clips()) >= 2, CLIP_WAIT, "2 clips relayed to fb")
            before = listener.seqs()[-1]
            a.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await until(lambda: lease_holder(client, room) == "fb", 30, "fb taking the room's lease")
            took = time.monotonic() - killed
            back = await Member.join(b, room=room, token=token)  # the host reconnects through fb
            # the new owner's stream a clip ahead of the playhead again (the takeover ran it down): a cut is reachable
            await until(lambda: steady(listener.clips()), 3 * CLIP_WAIT, "the new owner's stream ahead of the playhead")
            await back.send(type="prompt", prompt="rain on a tin roof")
            await until(lambda: any(c["end"]["prompt"] == "rain on a tin roof" for c in listener.clips()),
                        CLIP_WAIT, "the host's prompt after the takeover")
            heard = len(listener.clips())
            await until(lambda: len(listener.clips()) >= heard + 1, CLIP_WAIT, "the stream going on")
            stayed = listener.closed is None
            for member in (listener, back):
                await member.close()
            return listener, back, took, stayed, before

        listener, back, took, stayed, before = asyncio.run(scenario())
        log = b.log()
        takeovers = metric(b, "jam_cluster_takeovers_total")
    print(f"lease moved {took:.2f} s after the SIGKILL")
    assert took < DEFAULT_LEASE_SECONDS + WATCH_SECONDS + 3.0  # the lease's TTL + one look, with a loaded machine's slack
    assert back.welcome["role"] == "host"
    assert stayed  # the listener on fb never lost its connection
    assert not any(frame["type"] == "error" for _, frame in listener.frames)
    assert contiguous(listener.seqs()), listener.seqs()  # no gap, no duplicate across the takeover
    marked = [clip["seq"] for clip in listener.clips() if clip.get("discontinuity")]
    assert len(marked) == 1 and marked[0] > before, (marked, before)  # the new owner's first clip, marked
    cuts = [clip for clip in listener.clips() if clip["seq"] > marked[0] and clip.get("replaces")]
    print("cuts after the takeover at loop offsets", [round(clip["loop_offset"], 3) for clip in cuts])
    assert cuts, "the host's prompt after the takeover was not cut in"
    resumed_at = next(clip["stream_time"] for clip in listener.clips() if clip.get("discontinuity"))
    for clip in cuts:  # on the seed's 9-beat grid, not the 8-beat default
        assert on_grid(clip["loop_offset"], SEED_BEAT), clip["loop_offset"]
        # its frames restart a little before T, counted in the new owner's MP3 stream (from its first clip)
        assert 1 <= (clip["stream_time"] - resumed_at) * 44100 / 1152 - clip["mp3_frame"] <= 12, clip["mp3_frame"]
    assert "taken over (epoch 2) from its snapshot" in log and takeovers == 1
    assert "Traceback" not in log


def test_redis_restarted_everyone_reconnects_and_the_room_resumes(redis_server, tmp_path):
    with running_cluster(redis_server.url, ("fa", "fb"), log_dir=tmp_path) as servers:
        async def scenario():
            host = await Member.join(servers["fa"])
            await host.send(type="prompt", prompt="church bells")
            listener = await Member.join(servers["fb"], room=host.welcome["room"])
            await until(lambda: len(listener.clips()) >= 2, CLIP_WAIT, "2 clips before the restart")
            await asyncio.to_thread(redis_server.restart, 1.0)  # no persistence: Redis comes back empty
            restarted = len(listener.clips())
            await until(lambda: len(listener.clips()) >= restarted + 3, 2 * CLIP_WAIT, "clips after the restart")
            late = await Member.join(servers["fb"], room=host.welcome["room"])  # the room is findable again
            await until(lambda: late.clips(), 20, "a late joiner's catch-up after the restart")
            open_ = host.closed is None and listener.closed is None
            for member in (host, listener, late):
                await member.close()
            return listener, open_

        listener, open_ = asyncio.run(scenario())
        alive = [server.process.poll() is None for server in servers.values()]
        logs = "".join(server.log() for server in servers.values())
    assert open_ and all(alive)
    assert contiguous(listener.seqs()), listener.seqs()
    assert "reconnecting" in logs or "retrying" in logs  # they did see Redis go away
    assert "Traceback" not in logs


def test_a_front_end_sigstopped_past_the_stream_cap_skips_to_the_live_edge(redis_server, tmp_path):
    cap = ("--out-stream-frames", "4")
    with running_cluster(redis_server.url, ("fa", "fb"), frontend_args=cap, log_dir=tmp_path) as servers:
        b = servers["fb"]
        client = redis.Redis.from_url(redis_server.url)

        def published(room: str) -> int:
            return int(client.get(RoomKeys(room).published) or -1)

        async def scenario():
            host = await Member.join(servers["fa"])
            room = host.welcome["room"]
            listener = await Member.join(b, room=room)
            await until(lambda: len(listener.clips()) >= 2, CLIP_WAIT, "2 clips before the stall")
            stalled_at = listener.seqs()[-1]
            b.process.send_signal(signal.SIGSTOP)
            try:  # 5 clips more than the stream's 4 frames hold: fb's place in the stream is gone
                await until(lambda: published(room) >= stalled_at + 5, 6 * CLIP_WAIT, "5 clips during the stall")
            finally:
                b.process.send_signal(signal.SIGCONT)
            live = published(room)
            await until(lambda: listener.seqs()[-1] >= live, CLIP_WAIT, "the live clip after the resume")
            resumed = len(listener.seqs())
            await until(lambda: len(listener.seqs()) > resumed, CLIP_WAIT, "the next clip")
            await listener.close()
            await host.close()
            return listener, stalled_at, live

        listener, stalled_at, live = asyncio.run(scenario())
        skipped = metric(b, "jam_cluster_clips_skipped_total")
    seqs = listener.seqs()
    after = seqs[seqs.index(stalled_at) + 1:]
    assert after[0] > stalled_at + 1  # skipped what piled up
    assert after[0] >= live - 1  # ... to the newest clips: at most the catch-up's 2 before the live one
    assert after == sorted(set(after)) and contiguous(after), seqs
    assert skipped == after[0] - stalled_at - 1  # the front-end counts what its members skipped
