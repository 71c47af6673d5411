// The one interface of the two players (MsePlayer in player.js, WebAudioPlayer in webaudio-player.js), and
// what they share. The page talks to a player only through these members:
//
//   kind                  "mse" | "webaudio"
//   state                 "idle" (not started) | "buffering" (waiting for a start's worth) | "playing" | "stalled"
//                         (ran dry: an underrun, waiting again); onstatechange(state) is called on every change
//   append(bytes)         the next piece of the room's continuous MP3 stream, in order
//   play() / stop()       start (from a user gesture, so autoplay rules allow sound) and stop listening
//   volume                0..1 (setter)
//   mediaTime             seconds into the stream as the player counts it (0 = the first byte it was given)
//   bufferedEnd           media time where the audio received so far ends
//   bufferedAhead         seconds received but not yet played
//   heldSeconds           seconds of audio held in memory, played or not (stays bounded)
//   bufferedRangeCount    contiguous runs of audio held: 1 while the stream has never had a hole
//   underruns, secondsPlayed   counters for the page's status and the tests
//   onerror(text)         a playback problem worth showing
import { StartGate } from "./buffering.js";

export class Player {
  constructor(kind) {
    this.kind = kind;
    this.state = "idle";
    this.underruns = 0;
    this.secondsPlayed = 0;
    this.gate = new StartGate();
    this.onstatechange = () => {};
    this.onerror = () => {};
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onstatechange(state);
  }
}
