// Gapless playback of the room's one continuous MP3 stream. Clips arrive as consecutive frames of
// that stream; appending them to a single Media Source Extensions buffer plays them with no seam.
// A cut-in replaces what was buffered from its first frame on (SourceBuffer.remove, then the new
// frames appended at that time). Playback starts at the room's live edge and follows it: a drift
// beyond ~0.2 s is corrected by playing a little faster or slower (pitch kept), not by a jump.
// Where MSE cannot take audio/mpeg, the Web Audio player decodes and schedules them instead.
import { Player } from "./player-base.js";
import { WebAudioPlayer } from "./webaudio-player.js";

const MIME = "audio/mpeg";
// Played audio kept behind the playhead before it is trimmed; keeps memory flat over hours.
const KEEP_BEHIND_S = 10;
const TRIM_EVERY_S = 20;
// More buffered than this means the page fell behind the live edge (a sleeping tab, a late join):
// jump forward to `CATCH_UP_TO_S` ahead rather than lagging the room by minutes.
const MAX_AHEAD_S = 30;
const CATCH_UP_TO_S = 10;
const CHECK_EVERY_MS = 250;
const DRY_BELOW_S = 0.3; // "waiting" with less than this buffered is an underrun
const EDGE_AHEAD_S = 0.3; // start at the live edge once this much beyond it is buffered
const DRIFT_S = 0.2; // follow the room's clock when further off than this...
const SETTLED_S = 0.04; // ...until this close again
const NUDGE_RATE = 0.06; // playing 6% faster or slower to close the gap
const JUMP_S = 2.0; // further off than this (after a stall): jump to the live edge
// Starting is a jump anyway: an element that took long to start sounding (a busy CPU) is put on the edge at once.

export function mseSupportsMp3() {
  return typeof MediaSource !== "undefined" && MediaSource.isTypeSupported(MIME);
}

/** The best player this browser supports; `preference` ("mse" | "webaudio") forces one. See player-base.js. */
export function createPlayer(preference) {
  if (preference === "webaudio" || (preference !== "mse" && !mseSupportsMp3())) return new WebAudioPlayer();
  return new MsePlayer();
}

/** Plays the stream through an <audio> element fed by one SourceBuffer in "sequence" mode. */
export class MsePlayer extends Player {
  constructor() {
    super("mse");
    this.audio = new Audio();
    this.audio.preload = "auto";
    this.mediaSource = new MediaSource();
    this.audio.src = URL.createObjectURL(this.mediaSource);
    this.sourceBuffer = null;
    this.pending = []; // waiting for the SourceBuffer: {bytes} to append, or {bytes, at} to cut in at media time `at`
    this.started = false;
    this.onEdge = false;
    this.lastTime = 0;
    this.timer = null;
    this.mediaSource.addEventListener("sourceopen", () => this.openSourceBuffer(), { once: true });
    this.audio.addEventListener("waiting", () => this.stalled());
    this.audio.addEventListener("playing", () => this.setState("playing"));
    this.audio.addEventListener("timeupdate", () => this.countPlayed());
    this.audio.addEventListener("error", () => this.onerror(`audio element: ${this.audio.error?.message || "error"}`));
  }

  openSourceBuffer() {
    this.sourceBuffer = this.mediaSource.addSourceBuffer(MIME);
    this.sourceBuffer.mode = "sequence";
    this.sourceBuffer.addEventListener("updateend", () => this.pump());
    this.pump();
  }

  /** Queue the next piece of the stream. */
  append(bytes) {
    this.pending.push({ bytes });
    this.pump();
  }

  /** A cut-in: drop what is buffered from media time `at` on and play `bytes` from there. */
  cut(bytes, at) {
    this.pending.push({ bytes, at: Math.max(0, at) });
    this.pump();
  }

  /** Start playback at the live edge; call from a user gesture so autoplay rules allow sound from then on. */
  async play(liveEdge = () => null) {
    this.started = true;
    this.liveEdge = liveEdge;
    this.catchUp();
    this.rebuffer();
    const unlocked = this.audio.play(); // in the gesture: lets later play() calls make sound
    if (!this.readyToStart()) this.audio.pause();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.resumeWhenReady(), CHECK_EVERY_MS);
    await unlocked.catch((error) => {
      if (error.name !== "AbortError") throw error; // AbortError: our own pause while buffering
    });
  }

  stop() {
    this.started = false;
    clearInterval(this.timer);
    this.audio.pause();
    this.audio.playbackRate = 1;
    this.setState("idle");
  }

  rebuffer() {
    this.gate.reset();
    this.onEdge = false; // not yet checked against the room's clock since sound (re)started
    this.setState("buffering"); // the element's "playing" event says when sound really starts
  }

  /** At the live edge once it is buffered (with the room's clock unknown: a start's worth of audio). */
  readyToStart() {
    const edge = this.liveEdge();
    if (edge === null) return this.gate.ready(this.bufferedAhead);
    if (this.bufferedEnd < edge + EDGE_AHEAD_S || !this.isBuffered(edge)) return false;
    if (Math.abs(this.audio.currentTime - edge) > SETTLED_S) this.audio.currentTime = edge;
    return true;
  }

  isBuffered(time) {
    const ranges = this.sourceBuffer?.buffered;
    if (!ranges) return false;
    for (let i = 0; i < ranges.length; i += 1) if (ranges.start(i) <= time && time < ranges.end(i)) return true;
    return false;
  }

  resumeWhenReady() {
    if (!this.started || !this.audio.paused || !this.readyToStart()) return;
    this.audio.play().catch((error) => this.onerror(`play: ${error.message}`));
  }

  /** Follow the room's clock: `drift` is how far this page plays ahead of it (seconds). */
  follow(drift) {
    if (this.state !== "playing" || drift === null) return;
    const edge = this.liveEdge();
    const jump = this.onEdge ? JUMP_S : DRIFT_S;
    this.onEdge = true;
    if (Math.abs(drift) > jump && edge !== null && this.isBuffered(edge)) {
      this.audio.currentTime = edge;
      this.audio.playbackRate = 1;
    } else if (Math.abs(drift) > DRIFT_S) {
      this.audio.playbackRate = drift > 0 ? 1 - NUDGE_RATE : 1 + NUDGE_RATE;
    } else if (Math.abs(drift) < SETTLED_S) {
      this.audio.playbackRate = 1;
    }
  }

  set volume(value) {
    this.audio.volume = value;
  }

  get mediaTime() {
    return this.audio.currentTime;
  }

  get bufferedEnd() {
    const ranges = this.sourceBuffer?.buffered;
    return ranges && ranges.length ? ranges.end(ranges.length - 1) : 0;
  }

  get bufferedAhead() {
    return Math.max(0, this.bufferedEnd - this.mediaTime);
  }

  /** Seconds of audio the SourceBuffer holds, played or not: stays bounded thanks to trimming. */
  get heldSeconds() {
    const ranges = this.sourceBuffer?.buffered;
    return ranges && ranges.length ? ranges.end(ranges.length - 1) - ranges.start(0) : 0;
  }

  get bufferedRangeCount() {
    return this.sourceBuffer ? this.sourceBuffer.buffered.length : 0;
  }

  /** One SourceBuffer operation at a time: append (or cut in) what is pending, else trim what was played. */
  pump() {
    const buffer = this.sourceBuffer;
    if (!buffer || buffer.updating) return;
    if (this.pending.length) {
      const next = this.pending[0];
      if (next.at !== undefined && !next.removed) {
        next.removed = true; // first drop what the cut replaces; "updateend" brings us back here
        if (this.bufferedEnd > next.at) {
          buffer.remove(next.at, Infinity);
          return;
        }
      }
      try {
        if (next.at !== undefined) {
          buffer.abort(); // a fresh start for the parser, then the frames go where the cut begins
          buffer.timestampOffset = next.at;
        }
        buffer.appendBuffer(next.bytes);
        this.pending.shift();
      } catch (error) {
        if (error.name !== "QuotaExceededError") {
          this.pending.shift();
          this.onerror(`appendBuffer: ${error.message}`);
        } else if (!this.trim(0)) {
          this.onerror("audio buffer full");
        }
      }
      return;
    }
    if (!this.started) this.dropUnheard();
    this.trim(TRIM_EVERY_S);
    this.resumeWhenReady();
  }

  /** Remove played audio older than KEEP_BEHIND_S once more than `slack` seconds have piled up. */
  trim(slack) {
    const buffer = this.sourceBuffer;
    if (!buffer || buffer.updating || !buffer.buffered.length) return false;
    const removeEnd = this.mediaTime - KEEP_BEHIND_S;
    if (removeEnd - buffer.buffered.start(0) <= slack || removeEnd <= 0) return false;
    buffer.remove(0, removeEnd);
    return true;
  }

  /** Before Play, keep only the recent stream so the first listen starts near the live edge. */
  dropUnheard() {
    if (this.bufferedAhead > MAX_AHEAD_S) this.audio.currentTime = this.bufferedEnd - CATCH_UP_TO_S;
    this.trim(0);
  }

  catchUp() {
    if (this.bufferedAhead > MAX_AHEAD_S) this.audio.currentTime = this.bufferedEnd - CATCH_UP_TO_S;
  }

  countPlayed() {
    const now = this.audio.currentTime;
    const step = now - this.lastTime;
    if (step > 0 && step < 1) this.secondsPlayed += step; // seeks are not listening
    this.lastTime = now;
    if (this.started) this.catchUp();
    if (!this.sourceBuffer?.updating) this.pump();
  }

  /**
   * The element waits. If the buffer ran dry, count an underrun and hold until there is a start's
   * worth again; with audio still buffered it is a decoder hiccup (a busy CPU) that clears itself.
   */
  stalled() {
    if (!this.started || this.audio.seeking || this.state !== "playing") return;
    if (this.bufferedAhead > DRY_BELOW_S) return;
    this.underruns += 1;
    this.audio.pause();
    this.rebuffer();
    this.setState("stalled");
  }
}

