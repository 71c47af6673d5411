"""Front-ends (`jamserver serve --redis`) as real processes: one room heard through two front-ends, steered from
either, caught up by late joiners, and refused with `busy` when the workers have no slot left.

What a listener would notice if these broke: silence or a different stream on the front-end the room does not run
on, a host whose prompts do nothing when they reconnect elsewhere, a late joiner waiting for the next clip instead of
hearing the current one, or a new room that never plays because no worker can take it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
import redis

from tests.cluster_support import Member, lease_holder, running_cluster, until
from tests.server_support import post
from tests.upload_support import loop_upload

pytestmark = pytest.mark.slow

CLIP_WAIT = 60.0  # generous: a clip is due every 5.12 s, but the machine is shared
REST_BODY = {"alpha": 0.5, "num_inference_steps": 8, "seed_image_id": "og_beat",
             "start": {"prompt": "church bells on sunday", "seed": 42, "denoising": 0.75, "guidance": 7.0},
             "end": {"prompt": "jazz with piano", "seed": 123, "denoising": 0.75, "guidance": 7.0}}


def test_one_room_is_heard_and_steered_through_two_front_ends(redis_server, tmp_path):
    with running_cluster(redis_server.url, ("fa", "fb"), frontend_args=("--max-denoising-steps", "20"),
                         log_dir=tmp_path) as servers:
        a, b = servers["fa"], servers["fb"]

        async def scenario():
            host = await Member.join(a)
            room, token = host.welcome["room"], host.welcome["token"]
            await host.send(type="prompt", prompt="church bells")
            near = await Member.join(a, room=room)
            await until(lambda: len(near.clips()) >= 3, CLIP_WAIT, "3 clips on the owner's front-end")
            far = await Member.join(b, room=room)  # the room's first member on fb: caught up from Redis
            await until(lambda: far.clips(), 10, "the late joiner's catch-up clips")
            caught_up = far.seqs()[0]
            live = near.seqs()[-1]
            await until(lambda: any(f["listeners"] == 3 for f in far.of_type("state")), 20,
                        "the owner counting members on both front-ends")
            steer = await Member.join(b, room=room, token=token)  # the host, now through the other front-end
            await steer.send(type="prompt", prompt="rain on a tin roof")
            await until(lambda: any(c["end"]["prompt"] == "rain on a tin roof" for c in near.clips()), CLIP_WAIT,
                        "the prompt sent through fb heard on fa")
            # a refusal only the owner's session can make (40 steps x denoising > 20); it reaches the sender only
            await steer.send(type="settings", num_inference_steps=40)
            await until(lambda: steer.of_type("error"), 20, "the owner's refusal relayed to the sender")
            await host.send(type="settings", open_jam=True)  # listeners may queue prompts, one at a time each
            await until(lambda: far.open_jam(), 20, "the open jam relayed to fb")
            await far.send(type="prompt", prompt="listener one")
            await far.send(type="prompt", prompt="listener two")
            await until(lambda: far.of_type("error"), 20, "the owner refusing the listener's second prompt")
            last = near.seqs()[-1]
            await until(lambda: far.seqs() and far.seqs()[-1] >= last, CLIP_WAIT, "fb catching up with fa")
            for member in (host, near, far, steer):
                await member.close()
            return host, near, far, steer, caught_up, live

        host, near, far, steer, caught_up, live = asyncio.run(scenario())
        logs = a.log() + b.log()
    assert steer.welcome["role"] == "host" and far.welcome["role"] == "listener"
    assert caught_up >= live - 1  # the newest clips, not the room's first ones
    # everyone hears the same stream: the same clips (same bytes), in order, each once
    near_clips = {clip["seq"]: clip["audio"] for clip in near.clips()}
    for clip in far.clips():
        assert clip["audio"] == near_clips[clip["seq"]]
    for member in (near, far):
        assert member.seqs() == list(range(member.seqs()[0], member.seqs()[-1] + 1))
    assert steer.of_type("error")[0]["field"] == "num_inference_steps", steer.of_type("error")
    assert [error["code"] for error in far.of_type("error")] == ["rate_limited"]
    assert "one at a time" in far.of_type("error")[0]["message"]
    assert not any(frame["type"] == "error" for member in (host, near) for _, frame in member.frames)
    assert "Traceback" not in logs


def test_a_new_room_is_refused_busy_when_no_worker_slot_is_left_and_the_live_room_and_rest_go_on(redis_server,
                                                                                                  tmp_path):
    with running_cluster(redis_server.url, ("fa",), worker_args=("--max-batch", "1"), log_dir=tmp_path) as servers:
        a = servers["fa"]
        client = redis.Redis.from_url(redis_server.url)

        async def scenario():
            first = await Member.join(a)
            await until(lambda: first.clips(), CLIP_WAIT, "the first room's first clip")
            await until(lambda: lease_holder(client, first.welcome["room"]), 10, "the first room's lease")
            second = await Member.join(a)
            await until(lambda: second.closed, 20, "the refused connection closing")
            before = first.seqs()[-1]
            # the original REST API through the front-end: its clip made by the worker, in rows the room leaves free
            rest = await asyncio.to_thread(post, a, "/run_inference/", json.dumps(REST_BODY).encode())
            await until(lambda: first.seqs()[-1] >= before + 2, CLIP_WAIT, "the live room going on")
            await first.close()
            return second, rest

        second, (status, body) = asyncio.run(scenario())
    assert second.welcome["type"] == "error" and second.welcome["code"] == "busy", second.welcome
    assert "1 worker slots" in second.welcome["message"]
    assert status == 200, body
    output = json.loads(body)
    assert output["duration_s"] == pytest.approx(5.12) and output["audio"].startswith("data:audio/mpeg;base64,")


def upload(server, data: bytes) -> dict:
    request = urllib.request.Request(server.http_url + "/seed_images", data=data,
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 201
        return json.loads(response.read())


def test_a_seed_uploaded_through_one_front_end_plays_in_a_room_run_by_another(redis_server, tmp_path):
    """Front-ends sharing one --data-dir (docs/OPERATIONS.md): a loop uploaded through fa is the seed of a room fb
    runs, its clips made by a worker (jobs carry the seed's pixels), cut in on the loop's own beats."""
    shared = tmp_path / "data"
    with running_cluster(redis_server.url, ("fa", "fb"), frontend_args=("--data-dir", str(shared)),
                         log_dir=tmp_path) as servers:
        a, b = servers["fa"], servers["fb"]
        client = redis.Redis.from_url(redis_server.url)

        async def scenario():
            host = await Member.join(b)
            room = host.welcome["room"]
            await host.send(type="prompt", prompt="church bells")
            await until(lambda: host.clips(), CLIP_WAIT, "the room's first clip")
            seed = await asyncio.to_thread(upload, a, loop_upload(121.0, "wav", seed=3))
            await host.send(type="settings", seed_image_id=seed["id"])
            await until(lambda: any(frame["settings"]["seed_image_id"] == seed["id"]
                                    for frame in host.of_type("settings")), 30, "the room taking the upload")
            heard = len(host.clips())
            await until(lambda: len(host.clips()) >= heard + 2, 2 * CLIP_WAIT, "2 clips on the uploaded seed")
            await host.close()
            return room, seed, host

        room, seed, host = asyncio.run(scenario())
        owner = lease_holder(client, room)
    assert owner == "fb" and seed["beats"] == 10
    errors = host.of_type("error")
    assert not errors, errors
    beat = 5.12 / seed["beats"]
    for clip in host.clips():  # cut-ins after the change: on the upload's 10-beat grid
        if clip.get("replaces"):
            assert abs(clip["loop_offset"] / beat - round(clip["loop_offset"] / beat)) < 1e-3, clip["loop_offset"]
    assert "Traceback" not in a.log() + b.log()
