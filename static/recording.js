// What the listener has heard, kept as the stream's own MP3 bytes so "Download" is a plain
// concatenation: no re-encoding, and the file is exactly the audio that played. A cut-in cuts the
// kept bytes at its first frame, as the player did.
import { splitFrames } from "./mp3-frames.js";

const MAX_SECONDS = 60 * 60; // keep the last hour (about 58 MB at 128 kbit/s)

export class Recording {
  constructor() {
    this.pieces = []; // {seq, bytes, duration}
    this.seconds = 0;
  }

  /**
   * Add a heard clip's audio once, in stream order; `firstFrame` is the index of its first frame in MP3 stream
   * number `stream` (a takeover's discontinuity starts the next one, numbered afresh).
   */
  add(seq, bytes, duration, firstFrame = null, stream = 0) {
    if (this.pieces.some((piece) => piece.seq === seq)) return;
    this.pieces.push({ seq, bytes, duration, firstFrame, stream });
    this.seconds += duration;
    while (this.pieces.length > 1 && this.seconds > MAX_SECONDS) this.seconds -= this.pieces.shift().duration;
  }

  /**
   * Drop the kept frames from frame `index` of MP3 stream `stream` on (a cut-in replaced them; the frames of
   * earlier streams stay). The piece the cut falls in keeps the length of its remaining frames, whether it was
   * heard before the cut arrived or after (then the timeline had already shortened it).
   */
  cut(index, stream = 0) {
    const kept = [];
    for (const piece of this.pieces) {
      if (piece.firstFrame === null || piece.stream < stream || piece.firstFrame < index) kept.push(piece);
      else this.seconds -= piece.duration;
    }
    const last = kept[kept.length - 1];
    if (last && last.firstFrame !== null && last.stream === stream) {
      const { frames } = splitFrames(last.bytes);
      const keep = index - last.firstFrame;
      if (keep < frames.length) {
        const seconds = frames.slice(0, keep).reduce((sum, frame) => sum + frame.samples / frame.sampleRate, 0);
        last.bytes = last.bytes.slice(0, frames[keep].offset);
        this.seconds += seconds - last.duration;
        last.duration = seconds;
      }
    }
    this.pieces = kept;
  }

  get empty() {
    return this.pieces.length === 0;
  }

  /** The seq and duration of every kept piece, so a file's clip joins can be found again. */
  get layout() {
    return this.pieces.map(({ seq, duration }) => ({ seq, duration }));
  }

  toBlob() {
    return new Blob(this.pieces.map((piece) => piece.bytes), { type: "audio/mpeg" });
  }
}
