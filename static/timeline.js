// Where each received clip sits in the player's media time. The player sees one continuous stream
// starting at 0; clips carry the server's stream_time. The timeline converts between the two and
// counts which clips were actually heard (skipped audio is not "played"). A cut-in ends the clips it
// replaces at its start.

const KEEP_BEHIND_S = 60;

export class Timeline {
  constructor() {
    this.entries = []; // {seq, streamTime, duration, mediaStart, label, audio, heard, finished}
    this.mediaCursor = 0;
    this.lastSeq = -1;
    this.clipsPlayed = 0;
    this.onheard = () => {};
  }

  /** Whether `seq` is new (a reconnect re-sends the last clips, which must not be appended twice). */
  isNew(seq) {
    return seq > this.lastSeq;
  }

  /**
   * Add a clip whose audio starts at media time `mediaStart` (a cut-in first ends what it replaces); `mp3Stream`
   * counts the discontinuities before it (its `mp3_frame` numbers a frame of that MP3 stream).
   */
  add(clip, label, mediaStart = this.mediaCursor, mp3Stream = 0) {
    if (clip.replaces) this.cut(mediaStart);
    const entry = {
      seq: clip.seq, streamTime: clip.stream_time, duration: clip.duration, mediaStart, label, audio: clip.audio,
      mp3Frame: clip.mp3_frame, mp3Stream, replaces: Boolean(clip.replaces), heard: false, finished: false,
    };
    this.entries.push(entry);
    this.mediaCursor = mediaStart + clip.duration;
    this.lastSeq = clip.seq;
    return entry;
  }

  cut(mediaTime) {
    this.entries = this.entries.filter((entry) => entry.mediaStart < mediaTime - 1e-6);
    for (const entry of this.entries) entry.duration = Math.min(entry.duration, mediaTime - entry.mediaStart);
  }

  /** The clip under media time `t`, or null when nothing was received there. */
  at(t) {
    return this.entries.find((entry) => entry.mediaStart <= t && t < entry.mediaStart + entry.duration) || null;
  }

  /** Stream time under media time `t` (the same clock the server stamps clips with). */
  streamTimeAt(t) {
    const entry = this.at(t) || this.entries[this.entries.length - 1];
    return entry ? entry.streamTime + (t - entry.mediaStart) : null;
  }

  /** Move the playhead to `t` while playing: marks clips heard and counts the finished ones. */
  advance(t, playing) {
    const current = this.at(t);
    if (current && playing && !current.heard) {
      current.heard = true;
      this.onheard(current);
    }
    for (const entry of this.entries) {
      if (!entry.finished && entry.heard && t >= entry.mediaStart + entry.duration) {
        entry.finished = true;
        this.clipsPlayed += 1;
      }
    }
    while (this.entries.length > 1 && this.entries[0].mediaStart + this.entries[0].duration < t - KEEP_BEHIND_S) {
      this.entries.shift();
    }
    return current;
  }
}
