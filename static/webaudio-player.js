// Fallback playback for browsers whose Media Source Extensions cannot take audio/mpeg: decode each
// piece of the stream with decodeAudioData and schedule the pieces back to back on an AudioContext.
// A piece decoded on its own would start with the decoder's warm-up (and lack the bit reservoir of
// the frames before it), so each is decoded behind the last frames of the previous piece and the
// output is trimmed to exactly the samples of the new frames: the joins are sample-exact. A cut-in
// cancels the sources scheduled from its media time on (the one playing across it stops there) and
// its frames are decoded behind the room's frames just before them, so they continue the same way.
// Playback starts at the room's live edge (a late join or a restart skips what the room has passed).
import { Player } from "./player-base.js";
import { concatBytes, splitFrames } from "./mp3-frames.js";

// A frame's first granule overlaps the previous frame's output, and that frame's main data may start
// up to 511 bytes back (the bit reservoir): the primer is the previous frame plus frames before it
// holding at least that many bytes.
const RESERVOIR_BYTES = 511;
const START_LEAD_S = 0.1; // scheduling margin when (re)starting the clock
const MAX_AHEAD_S = 30; // decoded audio kept before Play: only the most recent
const TICK_MS = 100;
const EDGE_AHEAD_S = 0.3; // start at the live edge once this much beyond it is decoded
const HISTORY_FRAMES = 800; // frames kept (~21 s) to prime the decoder for a cut-in that reaches back

export class WebAudioPlayer extends Player {
  constructor() {
    super("webaudio");
    this.context = null; // playback context, made on Play
    this.decoder = null; // OfflineAudioContext used only to decode (no autoplay restrictions)
    this.gain = null;
    this.sampleRate = 0;
    this.volumeLevel = 1;
    this.rest = new Uint8Array(0); // an incomplete frame carried to the next piece
    this.history = []; // the room's frames received lately, oldest first: {index, bytes}, to prime the decoder
    this.nextIndex = null; // room-stream index of the next frame expected
    this.decoding = Promise.resolve();
    this.waiting = []; // decoded pieces not yet scheduled: {buffer, mediaStart}
    this.segments = []; // scheduled pieces: {startFrame, mediaStart, duration, source}
    this.mediaCursor = 0; // media time at the end of all decoded audio
    this.nextFrame = 0; // context sample frame where the next piece starts
    this.started = false;
    this.lastMediaTime = 0;
    this.timer = null;
  }

  /**
   * The next piece of the stream; `firstIndex` is the room-stream index of its first frame. `fresh`: it starts a
   * new MP3 stream (a takeover's discontinuity), so the old stream's frames must not prime its decoding.
   */
  append(bytes, firstIndex = this.nextIndex ?? 0, fresh = false) {
    if (fresh) {
      this.rest = new Uint8Array(0);
      this.history = [];
    }
    const whole = concatBytes([this.rest, bytes]);
    const { frames, rest } = splitFrames(whole);
    this.rest = rest.slice();
    if (!frames.length) return;
    const first = frames[0];
    const last = frames[frames.length - 1];
    const body = whole.subarray(first.offset, last.offset + last.length);
    const samples = frames.reduce((sum, frame) => sum + frame.samples, 0);
    this.history = this.history.filter((frame) => frame.index < firstIndex);
    const input = concatBytes([...primerFrames(this.history.map((frame) => frame.bytes)), body]);
    frames.forEach((frame, i) => this.history.push({ index: firstIndex + i, bytes: whole.slice(frame.offset, frame.offset + frame.length) }));
    if (this.history.length > HISTORY_FRAMES) this.history.splice(0, this.history.length - HISTORY_FRAMES);
    this.nextIndex = firstIndex + frames.length;
    this.sampleRate = this.sampleRate || first.sampleRate;
    this.decoding = this.decoding
      .then(() => this.decode(input, samples, first.sampleRate))
      .catch((error) => this.onerror(`decodeAudioData: ${error.message || error}`));
  }

  /** A cut-in: what was decoded or scheduled from media time `at` on goes; `bytes` (from frame `firstIndex`) play. */
  cut(bytes, at, firstIndex) {
    this.rest = new Uint8Array(0);
    this.decoding = this.decoding.then(() => this.cancelFrom(Math.max(0, at)));
    this.append(bytes, firstIndex);
  }

  cancelFrom(at) {
    const rate = this.sampleRate || 44100;
    this.waiting = this.waiting.filter((item) => item.mediaStart < at);
    const spanning = this.waiting[this.waiting.length - 1];
    if (spanning && spanning.mediaStart + spanning.buffer.duration > at) {
      spanning.buffer = firstSamples(spanning.buffer, Math.round((at - spanning.mediaStart) * spanning.buffer.sampleRate));
    }
    const kept = [];
    let resumeFrame = null; // where the cut-in's audio will be scheduled, if the cut reaches scheduled audio
    for (const segment of this.segments) {
      if (segment.mediaStart >= at) {
        segment.source.stop(0);
        resumeFrame = Math.min(resumeFrame ?? Infinity, segment.startFrame);
        continue;
      }
      if (segment.mediaStart + segment.duration > at) {
        segment.duration = at - segment.mediaStart;
        resumeFrame = segment.startFrame + segment.duration * rate;
        segment.source.stop(resumeFrame / rate);
      }
      kept.push(segment);
    }
    if (resumeFrame !== null) this.nextFrame = Math.round(resumeFrame);
    this.segments = kept;
    this.mediaCursor = Math.min(this.mediaCursor, at);
  }

  async decode(input, samples, sampleRate) {
    this.decoder = this.decoder || new OfflineAudioContext(2, 1, sampleRate);
    const decoded = await this.decoder.decodeAudioData(input.buffer.slice(input.byteOffset, input.byteOffset + input.byteLength));
    const piece = lastSamples(decoded, Math.round((samples * decoded.sampleRate) / sampleRate));
    const item = { buffer: piece, mediaStart: this.mediaCursor };
    this.mediaCursor += piece.duration;
    this.waiting.push(item);
    if (this.started) this.flush();
    else this.dropOld();
  }

  /** Before Play only the most recent audio is kept, so the first listen starts near the live edge. */
  dropOld() {
    while (this.waiting.length > 1 && this.mediaCursor - this.waiting[1].mediaStart > MAX_AHEAD_S) this.waiting.shift();
  }

  /** Audio is scheduled beyond the context's clock: playback is running and new pieces join on. */
  clockRunning() {
    return Boolean(this.context && this.segments.length && this.nextFrame > this.context.currentTime * this.context.sampleRate);
  }

  /** Schedule the decoded pieces: at once while playing, else from the live edge once it is decoded. */
  flush() {
    if (!this.waiting.length) return;
    if (this.clockRunning()) {
      for (const item of this.waiting.splice(0)) this.schedule(item);
      return;
    }
    const edge = this.liveEdge();
    if (edge === null) {
      if (this.gate.ready(this.bufferedAhead)) for (const item of this.waiting.splice(0)) this.schedule(item);
      return;
    }
    if (edge < 0 || this.mediaCursor < edge + EDGE_AHEAD_S) return; // the room starts playing at 0
    while (this.waiting.length > 1 && this.waiting[0].mediaStart + this.waiting[0].buffer.duration <= edge) this.waiting.shift();
    const first = this.waiting.shift();
    this.schedule(first, Math.max(0, Math.min(edge - first.mediaStart, first.buffer.duration)));
    for (const item of this.waiting.splice(0)) this.schedule(item);
  }

  async play(liveEdge = () => null) {
    this.liveEdge = liveEdge;
    if (!this.context) {
      this.context = new AudioContext({ sampleRate: this.sampleRate || 44100 });
      this.gain = this.context.createGain();
      this.gain.gain.value = this.volumeLevel;
      this.gain.connect(this.context.destination);
    }
    await this.context.resume();
    this.started = true;
    if (!this.clockRunning()) this.rebuffer("buffering");
    this.flush();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), TICK_MS);
  }

  stop() {
    this.started = false;
    clearInterval(this.timer);
    if (this.context) this.context.suspend();
    this.setState("idle");
  }

  rebuffer(state) {
    this.gate.reset();
    this.setState(state);
  }

  set volume(value) {
    this.volumeLevel = value;
    if (this.gain) this.gain.gain.value = value;
  }

  /** Schedule a decoded piece right after the last (from `skip` seconds into it, when starting at the edge). */
  schedule({ buffer, mediaStart }, skip = 0) {
    const context = this.context;
    const now = Math.ceil(context.currentTime * context.sampleRate);
    if (this.nextFrame < now) this.nextFrame = now + Math.round(START_LEAD_S * context.sampleRate);
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.gain);
    source.start(this.nextFrame / context.sampleRate, skip);
    this.segments.push({ startFrame: this.nextFrame, mediaStart: mediaStart + skip, duration: buffer.duration - skip, source });
    this.nextFrame += buffer.length - Math.round(skip * buffer.sampleRate);
    if (this.state !== "playing") this.setState("playing");
  }

  tick() {
    const context = this.context;
    const nowFrame = context.currentTime * context.sampleRate;
    if (this.state === "playing" && !this.clockRunning()) {
      this.underruns += 1;
      this.rebuffer("stalled");
    }
    this.flush();
    const media = this.mediaTime;
    const step = media - this.lastMediaTime;
    if (step > 0 && step < 1) this.secondsPlayed += step;
    this.lastMediaTime = media;
    const horizon = nowFrame - 2 * context.sampleRate;
    while (this.segments.length > 1 && this.segmentEndFrame(this.segments[0]) < horizon) this.segments.shift();
  }

  segmentEndFrame(segment) {
    return segment.startFrame + segment.duration * this.context.sampleRate;
  }

  get mediaTime() {
    if (!this.context || !this.segments.length) return this.waiting.length ? this.waiting[0].mediaStart : 0;
    const nowFrame = this.context.currentTime * this.context.sampleRate;
    let current = this.segments[0];
    for (const segment of this.segments) if (segment.startFrame <= nowFrame) current = segment;
    const into = (nowFrame - current.startFrame) / this.context.sampleRate;
    return current.mediaStart + Math.min(Math.max(into, 0), current.duration);
  }

  get bufferedEnd() {
    return this.mediaCursor;
  }

  get bufferedAhead() {
    return Math.max(0, this.mediaCursor - this.mediaTime);
  }

  /** Seconds of decoded audio still held (scheduled pieces are let go shortly after they play). */
  get heldSeconds() {
    return [...this.segments, ...this.waiting].reduce((sum, item) => sum + (item.duration ?? item.buffer.duration), 0);
  }

  /** Contiguous runs among the pieces held: 1 while playback has never had to restart its clock. */
  get bufferedRangeCount() {
    let runs = this.waiting.length ? 1 : 0;
    for (let i = 0; i < this.segments.length; i += 1) {
      const previous = this.segments[i - 1];
      if (!previous || Math.abs(this.segmentEndFrame(previous) - this.segments[i].startFrame) > 1) runs += 1;
    }
    return runs;
  }
}

/** The shortest tail of `frames` that lets the frame after them decode exactly. */
function primerFrames(frames) {
  let start = frames.length - 1;
  let reservoir = 0;
  while (start > 0 && reservoir < RESERVOIR_BYTES) {
    start -= 1;
    reservoir += frames[start].length;
  }
  return frames.slice(Math.max(start, 0));
}

/** The first `count` sample frames of `buffer`. */
function firstSamples(buffer, count) {
  const piece = new AudioBuffer({ numberOfChannels: buffer.numberOfChannels, length: Math.max(1, count), sampleRate: buffer.sampleRate });
  for (let channel = 0; channel < buffer.numberOfChannels; channel += 1) {
    piece.copyToChannel(buffer.getChannelData(channel).subarray(0, Math.max(1, count)), channel);
  }
  return piece;
}

/** The last `count` sample frames of `buffer` (front-padded with silence if it is shorter). */
function lastSamples(buffer, count) {
  const piece = new AudioBuffer({ numberOfChannels: buffer.numberOfChannels, length: count, sampleRate: buffer.sampleRate });
  const skip = buffer.length - count;
  for (let channel = 0; channel < buffer.numberOfChannels; channel += 1) {
    const data = buffer.getChannelData(channel);
    if (skip >= 0) piece.copyToChannel(data.subarray(skip), channel);
    else piece.copyToChannel(data, channel, -skip);
  }
  return piece;
}
