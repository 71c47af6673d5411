// The room's playout clock as this page sees it, and where stream times and MP3 frames sit in the player.
// Every member plays stream time S at t0 + S + D; each welcome, state and clip frame says where the room's
// playhead was as it left the server. The page starts at that live edge and follows it, and a cut-in
// tells it which MP3 frame of the room's stream its bytes start with.

export const FRAME_SAMPLES = 1152; // an MPEG-1 Layer III frame
export const CODEC_DELAY_SAMPLES = 576 + 529; // LAME's encoder delay + the decoder's

/**
 * The room's playhead: each frame's `playhead` plus the time since it arrived. The largest estimate wins
 * (a delayed frame can only report an older playhead); it never passes the audio received (members wait
 * there), and after the room ran dry or paused (its clock stood) it starts over from the next frame.
 */
export class PlayoutEstimate {
  constructor() {
    this.offset = null; // playhead - page clock (seconds)
    this.audioUntil = 0; // stream time up to which clips have arrived
    this.delay = 0; // the room's playout delay, from the welcome
  }

  observe(playhead, now) {
    if (typeof playhead !== "number") return;
    const offset = playhead - now;
    this.offset = this.offset === null ? offset : Math.max(this.offset, offset);
  }

  restart() {
    this.offset = null;
  }

  /** A clip's audio ends at `streamEnd`; if the playhead had reached the end of the audio, the clock stood. */
  audioArrived(streamEnd, now, replaces) {
    const playhead = this.at(now);
    if (playhead !== null && playhead >= this.audioUntil - 1e-3) this.restart();
    this.audioUntil = replaces ? streamEnd : Math.max(this.audioUntil, streamEnd);
  }

  /** The room's playhead at page time `now` (seconds), or null before any frame said. */
  at(now) {
    return this.offset === null ? null : Math.min(this.offset + now, this.audioUntil);
  }
}

/**
 * Stream time and MP3 frame index <-> the player's media time (0 = the first frame this page appended).
 * A clip marked `discontinuity` (a cluster front-end took the room over) starts a new MP3 stream whose frames
 * are numbered afresh: the player appends them right after the last frame it has, so the map is re-based
 * there (the old owner's last few frames of audio were never sent; the room's clock is followed as usual).
 */
export class MediaMap {
  constructor() {
    this.sampleRate = 44100;
    this.frameZero = null; // media time of frame 0 of the current MP3 stream
    this.streamShift = 0; // media time - stream time in the current MP3 stream
    this.endFrame = null; // index (current MP3 stream) of the frame after the last one appended
    this.streams = 0; // discontinuities seen: which MP3 stream the frames belong to
  }

  get started() {
    return this.frameZero !== null;
  }

  start(firstFrame, sampleRate) {
    this.sampleRate = sampleRate || 44100;
    this.frameZero = -(firstFrame * FRAME_SAMPLES) / this.sampleRate;
    this.streamShift = (CODEC_DELAY_SAMPLES - firstFrame * FRAME_SAMPLES) / this.sampleRate;
  }

  /**
   * A new MP3 stream begins with frame `firstFrame` at stream time `streamTime`: it plays from where the frames
   * appended so far end (its own encoder and decoder delay before the first sample, like the stream's start).
   */
  rebase(firstFrame, streamTime) {
    const at = this.endFrame === null ? 0 : this.frameMedia(this.endFrame);
    this.frameZero = at - (firstFrame * FRAME_SAMPLES) / this.sampleRate;
    this.streamShift = at + CODEC_DELAY_SAMPLES / this.sampleRate - streamTime;
    this.endFrame = firstFrame;
    this.streams += 1;
  }

  /** `count` frames from `firstFrame` on were appended (a cut-in's replace those from `firstFrame` on). */
  appended(firstFrame, count) {
    this.endFrame = firstFrame + count;
  }

  frameMedia(index) {
    return this.frameZero + (index * FRAME_SAMPLES) / this.sampleRate;
  }

  streamMedia(streamTime) {
    return streamTime + this.streamShift;
  }

  mediaStream(mediaTime) {
    return mediaTime - this.streamShift;
  }
}

/**
 * Prompt-to-ear latency on the player's own clock: from sending a prompt (the media time playing then) to the
 * first sample of the clip carrying it (the media time it starts at) being played.
 */
export class PromptLatency {
  constructor() {
    this.waiting = null; // {prompt, mediaAtSend, mediaHeard}
    this.last = null;
  }

  /** A prompt left at media time `mediaTime`: the latency is unknown (null) until it is heard. */
  sent(prompt, mediaTime) {
    this.waiting = { prompt, mediaAtSend: mediaTime, mediaHeard: null };
    this.last = null;
  }

  /**
   * A clip arrived whose audio starts at media time `mediaStart`. The prompt is heard from the earliest clip carrying
   * it (the clips after it carry it too); a cut-in that replaces that clip without carrying the prompt undoes it.
   */
  clipArrived(clip, mediaStart) {
    const waiting = this.waiting;
    if (!waiting) return;
    const carries = clip.end?.prompt === waiting.prompt;
    if (clip.replaces && !carries && waiting.mediaHeard !== null && mediaStart <= waiting.mediaHeard) {
      waiting.mediaHeard = null;
    }
    if (carries) waiting.mediaHeard = Math.min(waiting.mediaHeard ?? Infinity, mediaStart);
  }

  /** The player reached `mediaTime`: the latency, once the prompt's clip has begun to play. */
  played(mediaTime) {
    const waiting = this.waiting;
    if (waiting && waiting.mediaHeard !== null && mediaTime >= waiting.mediaHeard) {
      this.last = waiting.mediaHeard - waiting.mediaAtSend;
      this.waiting = null;
    }
    return this.last;
  }
}
