// The scrolling spectrogram: each clip's image laid on a time axis at its stream_time, moving
// left as the audio plays past a fixed playhead, with the prompt that made it written above.
// The time scale keeps each image's aspect: a square of the canvas height spans as many seconds as a square of
// image pixels does (5.12 s for the original 512x512 / 5.12 s clips), read from the clips themselves.

const PLAYHEAD_FRACTION = 0.35; // playhead position across the canvas: more room for what is coming
const LABEL_HEIGHT = 22;

export function clipLabel(clip) {
  const start = clip.start?.prompt ?? "";
  const end = clip.end?.prompt ?? "";
  return start === end || !end ? start : `${start} → ${end}`;
}

export class SpectrogramView {
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.clips = []; // {seq, streamTime, duration, label, bitmap}
    this.streamNow = null; // stream time under the playhead; null before anything plays
    this.squareSeconds = 5.12; // seconds per square of image pixels, from the latest decoded clip
    this.resize();
    new ResizeObserver(() => this.resize()).observe(canvas);
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    const { width, height } = this.canvas.getBoundingClientRect();
    this.canvas.width = Math.max(1, Math.round(width * ratio));
    this.canvas.height = Math.max(1, Math.round(height * ratio));
    this.draw();
  }

  /** Add a clip; its JPEG is decoded off the main thread. */
  async addClip(clip) {
    const entry = {
      seq: clip.seq, streamTime: clip.stream_time, duration: clip.duration, loopOffset: clip.loop_offset ?? 0,
      label: clipLabel(clip), bitmap: null,
    };
    this.clips.push(entry);
    this.clips.sort((a, b) => a.streamTime - b.streamTime);
    try {
      entry.bitmap = await brightOnDark(await createImageBitmap(new Blob([clip.image], { type: "image/jpeg" })));
      if (clip.duration > 0 && !clip.replaces) this.squareSeconds = (clip.duration * entry.bitmap.height) / entry.bitmap.width;
    } catch {
      entry.bitmap = null; // drawn as an empty frame with its label: the audio still plays
    }
    this.draw();
  }

  /** A cut-in replaces the stream from `streamTime`: clips end there. */
  cut(streamTime) {
    this.clips = this.clips.filter((clip) => clip.streamTime < streamTime - 1e-6);
    for (const clip of this.clips) clip.duration = Math.min(clip.duration, streamTime - clip.streamTime);
    this.draw();
  }

  /** Forget clips far behind the playhead so a long jam does not hold every image. */
  prune(keepAfterStreamTime) {
    while (this.clips.length && this.clips[0].streamTime + this.clips[0].duration < keepAfterStreamTime) {
      this.clips.shift().bitmap?.close();
    }
  }

  setTime(streamNow) {
    this.streamNow = streamNow;
    this.draw();
  }

  /** The clip's image from its loop offset for its duration, wrapping to the loop's start. */
  drawLoop(clip, x, top, pixelsPerSecond, height) {
    const loopSeconds = (this.squareSeconds * clip.bitmap.width) / clip.bitmap.height; // the image is one loop
    const columnsPerSecond = clip.bitmap.width / loopSeconds;
    let offset = clip.loopOffset % loopSeconds;
    let left = x;
    let remaining = clip.duration;
    while (remaining > 1e-3) {
      const span = Math.min(remaining, loopSeconds - offset);
      this.context.drawImage(clip.bitmap, offset * columnsPerSecond, 0, span * columnsPerSecond, clip.bitmap.height,
        left, top, span * pixelsPerSecond, height);
      left += span * pixelsPerSecond;
      remaining -= span;
      offset = 0;
    }
  }

  draw() {
    const { canvas, context } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.width;
    const height = canvas.height;
    const label = LABEL_HEIGHT * ratio;
    const imageHeight = height - label;
    context.fillStyle = "#0d1117";
    context.fillRect(0, 0, width, height);
    if (!this.clips.length) return;
    const pixelsPerSecond = imageHeight / this.squareSeconds;
    const playheadX = width * PLAYHEAD_FRACTION;
    const now = this.streamNow ?? this.clips[0].streamTime;
    context.font = `${12 * ratio}px system-ui, sans-serif`;
    context.textBaseline = "middle";
    let previousLabel = null;
    for (const clip of this.clips) {
      const x = playheadX + (clip.streamTime - now) * pixelsPerSecond;
      const clipWidth = clip.duration * pixelsPerSecond;
      if (x + clipWidth < 0 || x > width) {
        previousLabel = clip.label;
        continue;
      }
      if (clip.bitmap) this.drawLoop(clip, x, label, pixelsPerSecond, imageHeight);
      context.fillStyle = "rgba(13, 17, 23, 0.55)";
      context.fillRect(x, 0, 1 * ratio, height);
      context.fillStyle = clip.label === previousLabel ? "#8b949e" : "#e6edf3";
      context.save();
      context.beginPath();
      context.rect(x, 0, clipWidth, label);
      context.clip();
      // A clip that started off the left edge keeps its label in view.
      const textX = Math.max(x, 0) + 4 * ratio;
      context.fillText(clip.label, textX, label / 2);
      context.restore();
      previousLabel = clip.label;
    }
    if (this.streamNow !== null) {
      context.fillStyle = "#ff7b72";
      context.fillRect(playheadX - ratio, 0, 2 * ratio, height);
    }
  }
}

/** Loud is dark in the spectrogram image format; invert it once so it reads bright on the dark page. */
async function brightOnDark(bitmap) {
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    data[i] = 255 - data[i];
    data[i + 1] = 255 - data[i + 1];
    data[i + 2] = 255 - data[i + 2];
  }
  return createImageBitmap(pixels);
}
