// Fallback playback for browsers whose Media Source Extensions cannot take audio/mpeg: decode each
// piece of the stream with decodeAudioData and schedule the pieces back to back on an AudioContext.
// A piece decoded on its own would start with the decoder's warm-up (and lack the bit reservoir of
// the frames before it), so each is decoded behind the last frames of the previous piece and the
// output is trimmed to exactly the samples of the new frames: the joins are sample-exact.
import { Player } from "./player-base.js";
import { concatBytes, splitFrames } from "./mp3-frames.js";

// A frame's first granule overlaps the previous frame's output, and that frame's main data may start
// up to 511 bytes back (the bit reservoir): the primer is the previous frame plus frames before it
// holding at least that many bytes.
const RESERVOIR_BYTES = 511;
const START_LEAD_S = 0.1; // scheduling margin when (re)starting the clock
const MAX_AHEAD_S = 30; // decoded audio kept before Play: only the most recent
const TICK_MS = 100;

export class WebAudioPlayer extends Player {
  constructor() {
    super("webaudio");
    this.context = null; // playback context, made on Play
    this.decoder = null; // OfflineAudioContext used only to decode (no autoplay restrictions)
    this.gain = null;
    this.sampleRate = 0;
    this.volumeLevel = 1;
    this.rest = new Uint8Array(0); // an incomplete frame carried to the next piece
    this.primer = []; // the last frames already decoded, oldest first, as the next piece's primer
    this.decoding = Promise.resolve();
    this.waiting = []; // decoded pieces not yet scheduled: {buffer, mediaStart}
    this.segments = []; // scheduled pieces: {startFrame, mediaStart, duration}
    this.mediaCursor = 0; // media time at the end of all decoded audio
    this.nextFrame = 0; // context sample frame where the next piece starts
    this.started = false;
    this.lastMediaTime = 0;
    this.timer = null;
  }

  append(bytes) {
    const whole = concatBytes([this.rest, bytes]);
    const { frames, rest } = splitFrames(whole);
    this.rest = rest.slice();
    if (!frames.length) return;
    const first = frames[0];
    const last = frames[frames.length - 1];
    const body = whole.subarray(first.offset, last.offset + last.length);
    const samples = frames.reduce((sum, frame) => sum + frame.samples, 0);
    const input = concatBytes([...this.primer, body]);
    this.primer = primerFrames([...this.primer, ...frames.map((frame) => whole.slice(frame.offset, frame.offset + frame.length))]);
    this.sampleRate = this.sampleRate || first.sampleRate;
    this.decoding = this.decoding
      .then(() => this.decode(input, samples, first.sampleRate))
      .catch((error) => this.onerror(`decodeAudioData: ${error.message || error}`));
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

  /** Schedule the decoded pieces: at once while playing, else when there is a start's worth. */
  flush() {
    if (!this.waiting.length) return;
    if (!this.clockRunning() && !this.gate.ready(this.bufferedAhead)) return;
    for (const item of this.waiting.splice(0)) this.schedule(item);
  }

  async play() {
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

  schedule({ buffer, mediaStart }) {
    const context = this.context;
    const now = Math.ceil(context.currentTime * context.sampleRate);
    if (this.nextFrame < now) this.nextFrame = now + Math.round(START_LEAD_S * context.sampleRate);
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.gain);
    source.start(this.nextFrame / context.sampleRate);
    this.segments.push({ startFrame: this.nextFrame, mediaStart, duration: buffer.duration });
    this.nextFrame += buffer.length;
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
