"""One room's jam as a state machine: which clip to make next, and whether to make one now.

`plan_next_clip` is the only place musical decisions are taken (alpha steps, wraps, seeds, queued
prompts); `wants_clip` decides timing from a model of the listeners' play position. Pure: the
server passes `now` (a monotonic clock) in, so every decision can be replayed over simulated time.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from jamserver.jam.cutins import CutIns, CutStats
from jamserver.jam.cuts import CutTiming, DeliveryDelay, GenerationEstimate
from jamserver.jam.playout import PlayoutClock
from jamserver.jam.prompt import Prompt
from jamserver.jam.settings import SOUND_SETTINGS, Settings, fit_settings
from jamserver.jam.validation import SEED_RANGE, ProtocolError, StepLimits

# Expected length of a clip until one has been made (a 512-column seed image at 10 ms); from then on the session
# plans with the length of the last clip produced, and keeps time with the real length of each.
CLIP_SECONDS = 5.12
DEFAULT_PROMPT = "mellow lo-fi hip hop beat with warm rhodes piano"
DEFAULT_SEED = 42
MAX_UP_NEXT = 8
FIRST_GENERATION_GUESS = 1.0  # seconds to make a clip, until the room has measured its own
MAX_ATTEMPTS = 3  # a clip failing this often with the room's settings resets them to the defaults
_EPS = 1e-9


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip and place it in the room's stream."""

    seq: int
    start: Prompt
    end: Prompt
    alpha: float
    seed_image_id: str
    mask_image_id: str | None
    num_inference_steps: int
    stream_time: float
    duration: float
    attempt: int = 1
    replaces: bool = False  # a cut-in: spliced in at stream_time, superseding the audio from there on
    loop_offset: float = 0.0  # where in the rendered (looping) clip the audio starts: a cut keeps the beat grid

    @property
    def stream_end(self) -> float:
        return self.stream_time + self.duration


@dataclass(frozen=True)
class StateSnapshot:
    """What the "state" frame reports; compared to decide whether to send one."""

    listeners: int
    up_next: tuple[str, ...]
    paused: bool
    behind: bool


def _next_seed(seed: int) -> int:
    return (seed + 1) % (SEED_RANGE.high + 1)


class JamSession(CutIns):
    """The state of one room's jam. Not thread-safe: drive it from the room's event loop."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        first_prompt: Prompt | None = None,
        lookahead_clips: int = 1,
        max_up_next: int = MAX_UP_NEXT,
        clip_duration: float = CLIP_SECONDS,
        limits: StepLimits | None = None,
        playout_delay: float = 0.0,
        cut_timing: CutTiming | None = None,
        beats_of: Callable[[str], int | None] = lambda _seed_image_id: None,
        first_generation_guess: float = FIRST_GENERATION_GUESS,
    ) -> None:
        for name, value, low in (("lookahead_clips", lookahead_clips, 0), ("max_up_next", max_up_next, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not clip_duration > 0:
            raise ValueError(f"clip_duration must be positive, got {clip_duration!r}")
        self.limits = limits or StepLimits()
        self.defaults = fit_settings(settings or Settings(), self.limits)  # what a reset goes back to
        self.settings = self.defaults
        self.lookahead_clips = lookahead_clips
        self.max_up_next = max_up_next
        self.clip_duration = float(clip_duration)  # the expected length of the next clips
        first = first_prompt or Prompt(DEFAULT_PROMPT, DEFAULT_SEED)
        self._start = first if first.seed is not None else replace(first, seed=DEFAULT_SEED)
        self._end = self._start
        self._alpha: float | None = None  # alpha of the last planned clip; None before the first
        self._queue: deque[Prompt] = deque()
        self._next_seq = 0
        self._in_flight: dict[int, ClipPlan] = {}
        self._retry: list[tuple[int, ClipPlan]] = []  # heap by seq: failed clips are remade in order
        self._sides: dict[int, tuple[Prompt, Prompt]] = {}  # unresolved start/end of clips in flight
        self._delivered: dict[int, float] = {}  # seq -> real length, for clips delivered out of order
        self._contiguous = 0  # every seq below this has been delivered
        self._generated = 0.0  # their total length
        self._clip_ends: deque[float] = deque()  # stream times where the delivered clips end, from the playing one
        self._listeners = 0
        self._paused = False
        self._clock = PlayoutClock(playout_delay)
        self._reported: StateSnapshot | None = None
        self.cut_timing = cut_timing or CutTiming()
        self.generation = GenerationEstimate(first_generation_guess)  # a clip at the end of the stream: plan to sent
        # a cut-in, from plan to sent: made urgently (the engine steps it alone), so much faster than a clip batched
        # with other rooms' and learnt apart
        self.cut_generation = GenerationEstimate(first_generation_guess)
        self.cut_stats = CutStats()
        self.delivery = DeliveryDelay()  # owner -> relaying front-ends, on a cluster (cutins.py)
        self._beats_of = beats_of
        self._cut_wanted = False
        self._cut_waits_for: int | None = None  # a cut waits for this clip, being made, under its beat
        self._walks: dict[int, tuple[Prompt, Prompt, float | None]] = {}  # the transition after each clip
        self._placed: dict[int, ClipPlan] = {}  # recent clips planned, where they sit in the stream
        self._undo: dict[int, object] = {}  # cuts in flight -> the session as it was before them

    # -- prompts and settings ------------------------------------------------------------------

    @property
    def up_next(self) -> tuple[Prompt, ...]:
        return tuple(self._queue)

    def queue_prompt(self, prompt: Prompt) -> None:
        """Queue a prompt; the next planned clip starts moving towards the oldest queued one."""
        if len(self._queue) >= self.max_up_next:
            raise ProtocolError("queue_full", f"the up-next queue is full ({self.max_up_next} prompts)")
        if prompt.denoising is not None:
            self.limits.check(self.settings.num_inference_steps, prompt.denoising, "denoising")
        self._queue.append(prompt)
        self._cut_wanted = self._cut_wanted or self.settings.cut_in

    def update_settings(self, **changes: object) -> Settings:
        """Apply setting changes; they take effect from the next planned clip.

        Refused if any clip they would shape (prompts playing or queued with their own denoising) is over the caps.
        """
        settings = self.settings.updated(**changes)
        field = "denoising" if "denoising" in changes else "num_inference_steps"
        self.limits.check(settings.num_inference_steps, max(self._denoisings(settings)), field)
        before, self.settings = self.settings, settings
        if settings.cut_in and any(getattr(before, name) != getattr(settings, name) for name in SOUND_SETTINGS):
            self._cut_wanted = True  # with cut-ins a change of sound is heard like a prompt
        return self.settings

    def _denoisings(self, settings: Settings) -> list[float]:
        prompts = [self._start, self._end, *self._queue]
        return [settings.denoising, *(prompt.denoising for prompt in prompts if prompt.denoising is not None)]

    # -- the one decision point ----------------------------------------------------------------

    def plan_next_clip(self) -> ClipPlan:
        """Decide the next clip (or re-plan the oldest failed one) and advance the jam."""
        if self._retry:
            _, failed = heapq.heappop(self._retry)
            plan = self._replanned(failed)
        else:
            plan = self._advance_transition()
            self._cut_wanted = self._cut_wanted and bool(self._queue)  # this clip carries what was waiting
        self._in_flight[plan.seq] = self._placed[plan.seq] = plan
        return plan

    def _replanned(self, failed: ClipPlan) -> ClipPlan:
        """A failed clip again, with the room's settings as they are now (the host may have fixed them)."""
        start, end = self._sides[failed.seq]
        settings = self.settings
        return replace(failed, attempt=failed.attempt + 1, start=self._resolved(start), end=self._resolved(end),
                       seed_image_id=settings.seed_image_id, mask_image_id=settings.mask_image_id,
                       num_inference_steps=settings.num_inference_steps)

    def _advance_transition(self) -> ClipPlan:
        velocity = self.settings.alpha_velocity
        if self._alpha is None:  # first clip: the first prompt heard pure, then on to its next seed
            if self._queue:
                self._start = self._entering(self._queue.popleft(), self._start)
            self._end = replace(self._start, seed=_next_seed(self._start.seed))
            self._alpha = 0.0
        elif self._queue:  # a new prompt is carried by this very clip: rebase the transition
            base = self._start if self._alpha < 0.5 else self._end
            self._start, self._end = base, self._entering(self._queue.popleft(), base)
            self._alpha = velocity
        elif self._alpha >= 1.0 - _EPS:  # wrap: the end becomes the start, same prompt on its next seed
            self._start, self._end = self._end, replace(self._end, seed=_next_seed(self._end.seed))
            self._alpha = velocity
        else:
            self._alpha = min(1.0, round(self._alpha + velocity, 9))
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        self._sides[seq] = (self._start, self._end)
        self._walks[seq] = (self._start, self._end, self._alpha)
        return ClipPlan(
            seq=seq,
            start=self._resolved(self._start),
            end=self._resolved(self._end),
            alpha=self._alpha,
            seed_image_id=self.settings.seed_image_id,
            mask_image_id=self.settings.mask_image_id,
            num_inference_steps=self.settings.num_inference_steps,
            stream_time=self._generated + (seq - self._contiguous) * self.clip_duration,
            duration=self.clip_duration,
        )

    @staticmethod
    def _entering(prompt: Prompt, start: Prompt) -> Prompt:
        """A queued prompt's seed: its own, else the start's (the next seed if it is the same prompt)."""
        if prompt.seed is not None:
            return prompt
        return replace(prompt, seed=_next_seed(start.seed) if prompt.same_words(start) else start.seed)

    def _resolved(self, prompt: Prompt) -> Prompt:
        """Every field concrete, the room's settings filled in: what a clip is actually rendered with."""
        return prompt.with_defaults(denoising=self.settings.denoising, guidance=self.settings.guidance)

    # -- clips coming back -----------------------------------------------------------------------

    def _take_in_flight(self, plan: ClipPlan) -> None:
        if self._in_flight.get(plan.seq) != plan:
            raise ValueError(f"clip {plan.seq} (attempt {plan.attempt}) is not in flight")
        del self._in_flight[plan.seq]

    def clip_delivered(self, plan: ClipPlan, now: float, duration: float | None = None,
                       made_in: float | None = None) -> None:
        """A clip reached the listeners; the first one starts the playout clock.

        ``duration`` is the clip's real length (the planned one if None); it also becomes the expected length of
        the clips planned next, so a seed image of another width changes the stream's timing from its first clip.
        ``made_in``: seconds from planning to delivery: a cut's teaches how far ahead cuts are planned, a clip's how
        long the clip after a cut takes (how far a cut must run on).
        """
        length = plan.duration if duration is None else float(duration)
        if not (math.isfinite(length) and length > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
        self._tick(now)
        self._take_in_flight(plan)
        self._sides.pop(plan.seq, None)
        if made_in is not None:
            (self.cut_generation if plan.seq in self._undo else self.generation).observe(made_in)
        self._undo.pop(plan.seq, None)
        if plan.replaces:  # everything after the cut is gone; the cut is the stream's new end
            self._cut_delivered(plan, length)
        else:
            self._delivered[plan.seq] = length
            self.clip_duration = length
        while self._contiguous in self._delivered:
            self._generated += self._delivered.pop(self._contiguous)
            self._clip_ends.append(self._generated)
            self._contiguous += 1
        self._remember_plans()
        if not self._clock.started and self._contiguous > 0:
            self._clock.start(now)

    def clip_failed(self, plan: ClipPlan) -> bool:
        """Generation failed: the next `plan_next_clip` re-plans this clip (same seq and prompts, attempt + 1,
        the settings of that moment). True if this was its MAX_ATTEMPTS-th failure and the room's generation
        settings were reset to the defaults, so that the room goes on."""
        self._take_in_flight(plan)
        if plan.seq in self._undo:  # a failed cut is undone and wanted again
            self._undo_cut(plan)
            return False
        heapq.heappush(self._retry, (plan.seq, plan))
        if plan.attempt % MAX_ATTEMPTS:
            return False
        self.settings = replace(self.defaults, open_jam=self.settings.open_jam)
        return True

    # -- timing ----------------------------------------------------------------------------------

    @property
    def generated_until(self) -> float:
        """Stream time up to which audio has been delivered without gaps."""
        return self._generated

    @property
    def in_flight(self) -> int:
        """Clips planned and not yet delivered or failed."""
        return len(self._in_flight)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def listeners(self) -> int:
        return self._listeners

    @property
    def playout_delay(self) -> float:
        return self._clock.delay

    def planned(self, plan: ClipPlan) -> bool:
        """`plan` is in flight as it is (not superseded, dropped, delivered or moved by `land_cut`)."""
        return self._in_flight.get(plan.seq) == plan

    def _tick(self, now: float) -> float:
        return self._clock.playhead(now, self._generated)

    def position(self, now: float) -> float:
        """The playhead: where every member is in the stream (negative before the first sample plays), never past
        what was generated, frozen while paused."""
        return self._tick(now)

    def reported_playhead(self, now: float) -> float | None:
        """The playhead for members' frames: None until the clock starts (the first clip leaves). Before that it
        stands at -delay, and a client taking it for a running clock would run ahead by up to the delay once the
        first clip came sooner than that after it (and hear cut-ins late)."""
        return self.position(now) if self._clock.started else None

    def set_listeners(self, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"listeners must be an integer >= 0, got {count!r}")
        self._listeners = count

    def pause(self, now: float) -> None:
        self._clock.pause(now, self._generated)
        self._paused = True

    def resume(self, now: float) -> None:
        self._clock.resume(now)
        self._paused = False

    def wants_clip(self, now: float, in_flight: int | None = None) -> bool:
        """Should a clip be planned now? Keeps `lookahead_clips` clips ready beyond the playing one.

        `in_flight` defaults to the clips this session planned and has not heard back about.
        """
        position = max(self.position(now), 0.0)
        if self._paused or self._listeners == 0 or self.wants_cut(now) or self._cut_in_flight() is not None:
            return False  # a cut goes first
        if self._cut_waiting():
            return False
        if self._retry:  # a hole in the stream: nothing after it can play until it is remade
            return True
        pending = self.in_flight if in_flight is None else in_flight
        if pending < 0:
            raise ValueError(f"in_flight must be >= 0, got {pending}")
        ahead = self.generated_until + pending * self.clip_duration - self._playing_clip_end(position)
        return ahead < self.lookahead_clips * self.clip_duration - _EPS

    def _playing_clip_end(self, position: float) -> float:
        """Where the clip playing at ``position`` ends (the next clip's expected end when none is delivered)."""
        while self._clip_ends and self._clip_ends[0] <= position + _EPS:
            self._clip_ends.popleft()
        return self._clip_ends[0] if self._clip_ends else self._generated + self.clip_duration

    def behind(self, now: float) -> bool:
        """Listeners have played everything generated and are waiting for a clip still being made."""
        position = self.position(now)
        waiting = bool(self._in_flight or self._retry)
        return self._clock.started and not self._paused and waiting and position >= self.generated_until - _EPS

    # -- state frames ----------------------------------------------------------------------------

    def state_snapshot(self, now: float) -> StateSnapshot:
        return StateSnapshot(
            listeners=self._listeners,
            up_next=tuple(queued.prompt for queued in self._queue),
            paused=self._paused,
            behind=self.behind(now),
        )

    def state_if_changed(self, now: float) -> StateSnapshot | None:
        """The snapshot if it differs from the one this last returned (the first call always returns)."""
        snapshot = self.state_snapshot(now)
        if snapshot == self._reported:
            return None
        self._reported = snapshot
        return snapshot
