// What the listener has heard, kept as the stream's own MP3 bytes so "Download" is a plain
// concatenation: no re-encoding, and the file is exactly the audio that played.

const MAX_SECONDS = 60 * 60; // keep the last hour (about 58 MB at 128 kbit/s)

export class Recording {
  constructor() {
    this.pieces = []; // {seq, bytes, duration}
    this.seconds = 0;
  }

  /** Add a heard clip's audio once, in stream order. */
  add(seq, bytes, duration) {
    if (this.pieces.some((piece) => piece.seq === seq)) return;
    this.pieces.push({ seq, bytes, duration });
    this.seconds += duration;
    while (this.pieces.length > 1 && this.seconds > MAX_SECONDS) this.seconds -= this.pieces.shift().duration;
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
