// The one interface of the two players (MsePlayer in player.js, WebAudioPlayer in webaudio-player.js), and
// what they share. The page talks to a player only through these members:
//
//   kind                  "mse" | "webaudio"
//   state                 "idle" (not started) | "buffering" (waiting for a start's worth) | "playing" | "stalled"
//                         (ran dry: an underrun, waiting again); onstatechange(state) is called on every change
//   append(bytes, firstFrame, fresh)  the next piece of the room's continuous MP3 stream, in order; `firstFrame` is
//                         the room-stream index of its first MP3 frame (the clip frame's `mp3_frame`); `fresh`: it
//                         begins a new MP3 stream (`discontinuity`), played right after the last frame held
//   cut(bytes, at, firstFrame)  a cut-in: drop what is held from media time `at` on and play `bytes` from there
//   play(liveEdge) / stop()  start (from a user gesture, so autoplay rules allow sound) and stop listening;
//                         `liveEdge()` is the media time the room plays now (or null): playback starts there
//   follow(drift)         keep to the room's clock, `drift` seconds ahead of it (optional: MSE only)
//   volume                0..1 (setter)
//   mediaTime             seconds into the stream as the player counts it (0 = the first byte it was given)
//   bufferedEnd           media time where the audio received so far ends
//   bufferedAhead         seconds received but not yet played
//   heldSeconds           seconds of audio held in memory, played or not (stays bounded)
//   bufferedRangeCount    contiguous runs of audio held: 1 while the stream has never had a hole
//   underruns, secondsPlayed   counters for the page's status and the tests
//   onerror(text)         a playback problem worth showing

import { Stateful } from "./state.js";

// When playback may (re)start. Both players wait for more than one clip before making sound, so
// that one clip generated a little late does not stall the stream; after an underrun they wait
// again rather than stutter through each clip as it arrives.
const START_AHEAD_S = 6; // a clip is 5.12 s
const START_WAIT_MS = 8000; // with less, start anyway once some audio has waited this long
const SOME_AUDIO_S = 0.5;

class StartGate {
  constructor() {
    this.since = null; // when the buffer last went from empty to holding some audio
  }

  /** Call on each check while buffering: true once playback should (re)start. */
  ready(bufferedAhead, now = performance.now()) {
    if (bufferedAhead >= START_AHEAD_S) return true;
    if (bufferedAhead <= SOME_AUDIO_S) {
      this.since = null;
      return false;
    }
    this.since ??= now;
    return now - this.since >= START_WAIT_MS;
  }

  reset() {
    this.since = null;
  }
}

export class Player extends Stateful {
  constructor(kind) {
    super("idle");
    this.kind = kind;
    this.underruns = 0;
    this.secondsPlayed = 0;
    this.gate = new StartGate();
    this.liveEdge = () => null; // media time the room is playing now, or null when not known
    this.onerror = () => {};
  }
}
