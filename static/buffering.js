// When playback may (re)start. Both players wait for more than one clip before making sound, so
// that one clip generated a little late does not stall the stream; after an underrun they wait
// again rather than stutter through each clip as it arrives.

const START_AHEAD_S = 6; // a clip is 5.12 s
const START_WAIT_MS = 8000; // with less, start anyway once some audio has waited this long
const SOME_AUDIO_S = 0.5;

export class StartGate {
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
