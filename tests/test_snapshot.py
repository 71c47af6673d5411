"""Room snapshots: a session and a stream seam carried to another process decide and sound as if nothing happened."""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import pytest
from redis.asyncio import Redis

from jamserver.cluster.keys import RoomKeys
from jamserver.cluster.lease import Leases
from jamserver.cluster.snapshots import RoomSnapshot, load_snapshot
from jamserver.jam.prompt import Prompt
from jamserver.jam.session import JamSession
from jamserver.jam.settings import Settings
from jamserver.jam.snapshot import export_session, restore_session
from jamserver.jam.validation import StepLimits
from jamserver.server.room.stream import RoomStream
from pipeline.audio.joiner import ClipJoiner

RATE = 8000


def busy_session() -> tuple[JamSession, float]:
    """Three clips delivered, one in flight, one failed, prompts queued, listeners playing."""
    session = JamSession(Settings(alpha_velocity=0.5, denoising=0.6, num_inference_steps=40), lookahead_clips=2,
                         limits=StepLimits(max_steps=40, max_denoising_steps=30))
    session.set_listeners(3)
    now = 100.0
    for _ in range(3):
        session.clip_delivered(session.plan_next_clip(), now)
        now += 1.0
    session.queue_prompt(Prompt("rain on a tin roof", guidance=9.0))
    failed = session.plan_next_clip()
    session.queue_prompt(Prompt("steel drums", seed=7))
    session.clip_failed(failed)
    session.plan_next_clip()  # the failed clip remade: in flight again
    session.plan_next_clip()  # and the next one
    session.update_settings(guidance=5.0)  # a clip remade after this takes it
    session.delivery_observed(0.3, now)  # a relay reported a slow clip (cuts leave that much earlier)
    return session, now + 2.0


def test_a_restored_session_plans_what_the_old_one_would_have():
    original, now = busy_session()
    # msgpack on the way, as in Redis
    state = msgpack.unpackb(msgpack.packb(export_session(original, now)), raw=False)
    restored = restore_session(state, now=5.0, elapsed=0.0)  # another process: another monotonic clock
    # the old owner's clips in flight are lost with it; it would have had them remade
    for plan in sorted(original._in_flight.values(), key=lambda p: p.seq):
        original.clip_failed(plan)
    assert restored.up_next == original.up_next
    assert restored.settings == original.settings and restored.settings.guidance == 5.0
    assert restored.defaults == original.defaults and restored.limits == original.limits
    assert restored.generated_until == original.generated_until
    assert restored.position(5.0) == original.position(now)
    assert restored.cut_reach(5.0) == pytest.approx(original.cut_reach(now))  # the new owner plans cuts as early
    for step in range(6):
        mine, theirs = original.plan_next_clip(), restored.plan_next_clip()
        assert mine == theirs, step
        original.clip_delivered(mine, now + step)
        restored.clip_delivered(theirs, 5.0 + step)
    assert restored.wants_clip(12.0) == original.wants_clip(now + 7.0)


def test_the_play_position_moves_on_by_the_time_in_transit_unless_paused():
    session = JamSession()
    session.set_listeners(1)
    for _ in range(3):
        session.clip_delivered(session.plan_next_clip(), 0.0)
    state = export_session(session, 1.0)
    assert restore_session(state, now=0.0, elapsed=2.5).position(0.0) == pytest.approx(3.5)
    assert restore_session(state, now=0.0, elapsed=60).position(0.0) == pytest.approx(session.generated_until)
    session.pause(1.0)
    assert restore_session(export_session(session, 1.0), now=0.0, elapsed=2.5).position(0.0) == pytest.approx(1.0)


def test_a_session_field_the_snapshot_does_not_know_is_caught_before_it_is_lost():
    session = JamSession()
    session._new_idea = 1
    with pytest.raises(RuntimeError, match="_new_idea"):
        export_session(session, 0.0)


def test_clips_of_another_length_keep_their_stream_times_across_a_restore():
    session = JamSession()
    session.set_listeners(1)
    session.clip_delivered(session.plan_next_clip(), 0.0, duration=4.0)
    session.clip_delivered(session.plan_next_clip(), 0.5, duration=4.0)
    pending = session.plan_next_clip()
    restored = restore_session(msgpack.unpackb(msgpack.packb(export_session(session, 1.0)), raw=False), now=0.0)
    session.clip_failed(pending)
    assert restored.generated_until == session.generated_until == 8.0
    assert restored.plan_next_clip() == session.plan_next_clip()
    assert restored.wants_clip(0.5) == session.wants_clip(1.5)


def waltz_session() -> tuple[JamSession, float]:
    """A room on a 6-beat seed (vibes) with cut-ins, playing its second clip; a prompt waits to be cut in."""
    session = JamSession(Settings(seed_image_id="vibes", cut_in=True), playout_delay=1.0,
                         beats_of={"og_beat": 8, "vibes": 6}.get, first_generation_guess=0.8)
    session.set_listeners(1)
    session.clip_delivered(session.plan_next_clip(), 0.0)
    session.clip_delivered(session.plan_next_clip(), 0.5)
    session.queue_prompt(Prompt("jazz"))
    return session, 3.0


def test_a_restored_session_cuts_on_its_seed_beat_grid_even_where_the_seed_is_unknown():
    session, now = waltz_session()
    state = msgpack.unpackb(msgpack.packb(export_session(session, now)), raw=False)
    restored = restore_session(state, now=20.0)  # a new owner that knows no beats of any seed (an uploaded one)
    theirs, _ = restored.plan_cut(20.0)
    mine, _ = session.plan_cut(now)
    beat = session.clip_duration / 6
    assert theirs.replaces and theirs.stream_time == pytest.approx(mine.stream_time)
    assert theirs.stream_time / beat == pytest.approx(round(theirs.stream_time / beat))
    assert theirs.stream_time / (session.clip_duration / 8) != pytest.approx(round(theirs.stream_time / (session.clip_duration / 8)))


def test_a_snapshot_without_seed_beats_restores_with_the_new_owners_beats():
    session, now = waltz_session()
    state = export_session(session, now)
    del state["beats"]  # as an older front-end wrote it
    beat = session.clip_duration / 6
    mine, _ = session.plan_cut(now)
    theirs, _ = restore_session(state, now=20.0, beats_of={"vibes": 6}.get).plan_cut(20.0)
    assert theirs.stream_time == pytest.approx(mine.stream_time)
    assert theirs.stream_time / beat == pytest.approx(round(theirs.stream_time / beat))
    unknown, _ = restore_session(state, now=20.0).plan_cut(20.0)  # nobody knows: the default 8-beat grid
    assert unknown.stream_time / (beat * 6 / 8) == pytest.approx(round(unknown.stream_time / (beat * 6 / 8)))


def test_an_unknown_snapshot_version_is_refused_by_name():
    state = export_session(JamSession(), 0.0)
    with pytest.raises(ValueError, match="version"):
        restore_session({**state, "version": 99}, now=0.0)


def clips(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    t = np.arange(RATE) / RATE
    return [((0.3 + 0.2 * k) * np.sin(2 * np.pi * (220 + 40 * k) * t + rng.uniform(0, 6)).astype(np.float32)[None],
             rng.uniform(-0.5, 0.5, (1, 400)).astype(np.float32)) for k in range(count)]


def test_a_stream_resumed_elsewhere_joins_the_next_clip_sample_for_sample_the_same():
    audio = clips(4)
    straight = ClipJoiner(sample_rate=RATE)
    expected = [straight.push(clip, continuation) for clip, continuation in audio]
    first = RoomStream(RATE)
    for clip, continuation in audio[:2]:
        first.append(clip, continuation)
    snapshot = RoomSnapshot.unpack(RoomSnapshot.take("r", 1, JamSession(), first, 0.0).pack())
    second = RoomStream(RATE)
    snapshot.restore_stream(second)
    assert second.stream_seconds == first.stream_seconds == 2.0
    resumed = ClipJoiner(sample_rate=RATE)
    resumed.restore(snapshot.joiner)
    for (clip, continuation), want in zip(audio[2:], expected[2:]):
        np.testing.assert_array_equal(resumed.push(clip, continuation), want)
    piece = second.append(*audio[2])
    assert piece.stream_time == 2.0 and piece.audio
    with pytest.raises(ValueError, match="older"):  # a cut-in cannot reach back into the old owner's audio
        second.cut(1.5, [audio[3]])
    with pytest.raises(RuntimeError, match="fresh"):
        snapshot.restore_stream(second)


def test_the_snapshot_published_with_a_clip_is_the_one_a_new_owner_loads(redis_server):
    session, now = busy_session()
    stream = RoomStream(RATE)
    for clip, continuation in clips(2):
        stream.append(clip, continuation)

    async def scenario():
        async with Redis.from_url(redis_server.url) as redis:
            keys = RoomKeys("snap")
            missing = await load_snapshot(redis, keys)
            leases = Leases(redis)
            lease = await leases.acquire(keys, "fe-a")
            taken = RoomSnapshot.take("snap", lease.epoch, session, stream, now)
            await leases.publish(lease, "clip", b"frame", seq=2, snapshot=taken.pack())
            return missing, taken, await load_snapshot(redis, keys)

    missing, taken, loaded = asyncio.run(scenario())
    assert missing is None
    assert loaded.session == taken.session and loaded.joiner.samples_out == taken.joiner.samples_out == 2 * RATE
    np.testing.assert_array_equal(loaded.joiner.continuation, taken.joiner.continuation)
    assert loaded.restore_session(0.0).up_next == session.up_next
