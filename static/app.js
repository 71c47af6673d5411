// The jam page: joins (or creates) a room, plays its stream gaplessly at the room's playout clock
// (starting at the live edge, splicing cut-ins where they land), scrolls the spectrogram under a
// playhead, and gives the host the controls. `window.jam` is a read-only view of the page's state
// for tests and debugging (stats, listenUrl, controlUrl, role, room, player, clips); the page itself
// never reads it.
import { JamConnection, socketUrl } from "./connection.js";
import { Controls } from "./controls.js";
import { $ } from "./dom.js";
import { splitFrames } from "./mp3-frames.js";
import { createPlayer } from "./player.js";
import { MediaMap, PlayoutEstimate, PromptLatency } from "./playout.js";
import { Recording } from "./recording.js";
import { Timeline } from "./timeline.js";
import { SeedUpload } from "./upload.js";
import { SpectrogramView, clipLabel } from "./view.js";

const STATUS_EVERY_MS = 250;
const CLIP_LOG_LENGTH = 8;
const ERROR_SHOWN_MS = 10_000;
const DRAW_FPS = 30;
const CONNECTION_TEXT = { connecting: "connecting…", connected: "connected", reconnecting: "reconnecting…", closed: "disconnected" };

const params = new URLSearchParams(location.search);

const connection = new JamConnection(socketUrl(location), { room: params.get("room"), token: params.get("token") });
const player = createPlayer(params.get("player"));
const timeline = new Timeline();
const recording = new Recording();
const view = new SpectrogramView($("spectrogram"));
const clock = new PlayoutEstimate();
const media = new MediaMap();
const promptLatency = new PromptLatency();
const controls = new Controls((message) => {
  const sent = connection.send(message);
  if (!sent) showError("not connected: the message was not sent");
  else if (message.type === "prompt" && wantPlaying && player.state === "playing") {
    promptLatency.sent(message.prompt, player.mediaTime);
    stats.lastPromptLatency = null;
  }
  return sent;
});

let seedIds = [];
const uploadedSeeds = []; // the server's answers to this page's uploads
// An accepted upload joins the picker and becomes the room's seed: every member hears riffs on it.
new SeedUpload((answer) => {
  if (!seedIds.includes(answer.id)) seedIds = [...seedIds, answer.id];
  uploadedSeeds.push(answer);
  controls.renderSeedPicker(seedIds, answer.id);
  controls.send({ type: "settings", seed_image_id: answer.id });
});

// cuts: cut-ins received; discontinuities: new MP3 streams (takeovers); lastPromptLatency: seconds from sending a prompt to hearing the first sample of its
// cut-in, on the player's own clock; drift: how far playback is ahead of the room's clock
const stats = {
  clipsReceived: 0, clipsPlayed: 0, underruns: 0, bufferedRanges: 0, secondsPlayed: 0, lastError: null, currentTime: 0,
  heldSeconds: 0, cuts: 0, lastPromptLatency: null, drift: null, playoutDelay: null, discontinuities: 0,
};
// seedImageId: the room's seed image, from welcome and settings frames
const membership = { role: null, room: null, listenUrl: null, controlUrl: null, seedImageId: null };
const clipLog = []; // metadata of every received clip: {seq, stream_time, duration, label, gen_seconds, received_at}

window.jam = {
  stats,
  clips: clipLog,
  uploadedSeeds,
  player: player.kind,
  get role() { return membership.role; },
  get room() { return membership.room; },
  get listenUrl() { return membership.listenUrl; },
  get controlUrl() { return membership.controlUrl; },
  get seedImageId() { return membership.seedImageId; },
  recordingLayout: () => recording.layout,
};

let serverState = { listeners: 0, up_next: [], paused: false, behind: false };
let lastClip = null;
let wantPlaying = false;

let errorTimer = null;

/** Show an error for a while (the server keeps the connection open after one); stats keep it. */
function showError(text) {
  stats.lastError = text;
  const banner = $("error");
  banner.textContent = text;
  banner.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => {
    banner.hidden = true;
  }, ERROR_SHOWN_MS);
}

function shareLinks(room, token) {
  const base = `${location.origin}${location.pathname}`;
  membership.listenUrl = `${base}?room=${encodeURIComponent(room)}`;
  membership.controlUrl = token ? `${membership.listenUrl}&token=${encodeURIComponent(token)}` : null;
  $("listen-link").value = membership.listenUrl;
  $("control-link-row").hidden = !membership.controlUrl;
  // Reloading keeps the room (and, for the host, control of it).
  history.replaceState(null, "", membership.controlUrl || membership.listenUrl);
}

/** Media time the room is playing now (its live edge), or null before the room's clock is known. */
function liveEdge() {
  const playhead = clock.at(performance.now() / 1000);
  return playhead === null || !media.started ? null : media.streamMedia(playhead); // before 0: not yet
}

function onWelcome(message) {
  clock.delay = message.playout_delay ?? 0;
  stats.playoutDelay = clock.delay;
  clock.observe(message.playhead, performance.now() / 1000);
  membership.role = message.role;
  membership.room = message.room;
  $("room-id").textContent = message.room;
  shareLinks(message.room, message.token);
  const model = message.model;
  $("model-info").textContent = `model ${model.checkpoint} on ${model.device}`;
  $("demo-banner").hidden = !model.demo;
  $("model-banner").hidden = Boolean(model.demo) || !model.description;
  $("model-banner").textContent = model.demo ? "" : `Model: ${model.description ?? ""}.`;
  const host = message.role === "host";
  $("role-note").textContent = host
    ? "You are the host: share the listener link, or the control link to hand over control."
    : "You are listening: the host chooses what plays next.";
  controls.show(host);
  membership.seedImageId = message.settings.seed_image_id ?? null;
  if (host) {
    const settings = message.settings;
    seedIds = message.seed_images;
    controls.applyLimits(message.limits);
    controls.renderSeedPicker(seedIds, settings.seed_image_id).then(() => controls.applySettings(settings));
    controls.applySettings(settings);
  }
}

function onSettings(settings) {
  membership.seedImageId = settings.seed_image_id ?? membership.seedImageId;
  if (membership.role === "host" && settings.seed_image_id && !seedIds.includes(settings.seed_image_id)) {
    seedIds = [...seedIds, settings.seed_image_id]; // uploaded from another page of this room
    controls.renderSeedPicker(seedIds, settings.seed_image_id).then(() => controls.applySettings(settings));
  }
  controls.applySettings(settings);
}

function onClip(clip) {
  if (!timeline.isNew(clip.seq)) return; // re-sent after a reconnect
  const now = performance.now() / 1000;
  stats.clipsReceived += 1;
  const label = clipLabel(clip);
  const firstFrame = clip.mp3_frame ?? media.endFrame ?? 0;
  if (!media.started) media.start(firstFrame, clip.sample_rate);
  else if (clip.discontinuity) media.rebase(firstFrame, clip.stream_time); // a takeover: a new MP3 stream
  clock.audioArrived(clip.stream_time + clip.duration, now, clip.replaces);
  clock.observe(clip.playhead, now);
  const mediaStart = media.streamMedia(clip.stream_time);
  if (clip.replaces) {
    stats.cuts += 1;
    player.cut(clip.audio, media.frameMedia(firstFrame), firstFrame);
    view.cut(clip.stream_time);
  } else {
    player.append(clip.audio, firstFrame, Boolean(clip.discontinuity));
  }
  media.appended(firstFrame, splitFrames(clip.audio).frames.length);
  if (clip.discontinuity) stats.discontinuities += 1;
  timeline.add(clip, label, mediaStart, media.streams);
  promptLatency.clipArrived(clip, mediaStart);
  view.addClip(clip);
  lastClip = clip;
  clipLog.push({
    seq: clip.seq, stream_time: clip.stream_time, duration: clip.duration, label, gen_seconds: clip.gen_seconds,
    received_at: performance.now() / 1000, // page clock, seconds: for judging delivery against playback
  });
  if (clipLog.length > 500) clipLog.shift();
  logClip(clip, label);
}

function logClip(clip, label) {
  const item = document.createElement("li");
  item.dataset.seq = clip.seq;
  item.className = "upcoming";
  const time = document.createElement("span");
  time.className = "clip-time";
  time.textContent = formatTime(clip.stream_time);
  const text = document.createElement("span");
  text.className = "clip-label";
  text.textContent = label;
  item.append(time, text);
  const log = $("clip-log");
  log.prepend(item);
  while (log.children.length > CLIP_LOG_LENGTH) log.lastElementChild.remove();
}

/** Colour the clip log: the clip under the playhead, the ones buffered after it, the ones heard. */
function markPlayingClip(seq) {
  for (const item of $("clip-log").children) {
    const itemSeq = Number(item.dataset.seq);
    item.className = seq === null || itemSeq > seq ? "upcoming" : itemSeq === seq ? "playing" : "";
  }
}

function onState(state) {
  if (state.behind || state.paused) clock.restart(); // the room's clock stands: start the estimate over
  clock.observe(state.playhead, performance.now() / 1000);
  serverState = { ...serverState, ...state };
  const count = serverState.listeners;
  $("listener-count").textContent = `${count} ${count === 1 ? "person" : "people"} here`;
  const upNext = $("up-next");
  upNext.replaceChildren(
    ...serverState.up_next.map((entry) => {
      const item = document.createElement("li");
      item.textContent = entry;
      return item;
    }),
  );
  $("up-next-empty").hidden = serverState.up_next.length > 0;
  controls.setPaused(serverState.paused);
  followPause(serverState.paused);
}

/** The host's pause freezes the room's stream clock: hold playback too, so it is no underrun. */
async function followPause(paused) {
  if (!wantPlaying) return;
  if (paused && player.state !== "idle") player.stop();
  else if (!paused && player.state === "idle") await player.play(liveEdge).catch((error) => showError(`playback: ${error.message}`));
}

connection.onmessage = (message) => {
  switch (message.type) {
    case "welcome":
      return onWelcome(message);
    case "clip":
      return onClip(message);
    case "state":
      return onState(message);
    case "settings":
      return onSettings(message.settings);
    case "error":
      return showError(`${message.code}: ${message.message}`);
    default:
      return undefined; // pong and future frame types
  }
};
connection.onstatechange = (state) => {
  const pill = $("conn-state");
  pill.textContent = CONNECTION_TEXT[state] || state;
  pill.dataset.state = state;
};

timeline.onheard = (entry) => {
  if (entry.replaces) recording.cut(entry.mp3Frame, entry.mp3Stream); // the download keeps what played, as the player did
  recording.add(entry.seq, entry.audio, entry.duration, entry.mp3Frame ?? null, entry.mp3Stream);
  entry.audio = null;
  $("download").disabled = false;
};
player.onerror = (text) => showError(text);

function playbackText() {
  if (!wantPlaying) return lastClip ? "press Play to listen" : "waiting for the first clip…";
  if (serverState.paused) return "paused by the host";
  if (player.state === "stalled") return "behind: waiting for the next clip…";
  if (player.state === "buffering" && player.bufferedAhead > 0) return "buffering…";
  if (player.state === "buffering" || !lastClip) return "generating…";
  return serverState.behind ? "playing (the server is behind)" : "playing";
}

function updateStatus() {
  const now = player.mediaTime;
  const playing = wantPlaying && player.state === "playing";
  const current = timeline.advance(now, playing);
  stats.clipsPlayed = timeline.clipsPlayed;
  stats.underruns = player.underruns;
  stats.bufferedRanges = player.bufferedRangeCount;
  stats.secondsPlayed = player.secondsPlayed;
  stats.currentTime = now;
  stats.heldSeconds = player.heldSeconds;
  const edge = liveEdge();
  stats.drift = playing && edge !== null ? now - edge : null;
  player.follow?.(stats.drift);
  if (playing) stats.lastPromptLatency = promptLatency.played(now);
  $("buffer-info").textContent = `${player.bufferedAhead.toFixed(1)} s buffered`;
  if (lastClip && lastClip.gen_seconds > 0) {
    $("rtf-info").textContent = `${(lastClip.duration / lastClip.gen_seconds).toFixed(1)}x real time`;
  }
  $("playback-state").textContent = playbackText();
  $("now-playing").textContent = wantPlaying && current ? current.label : "—";
  markPlayingClip(wantPlaying && current ? current.seq : null);
  const streamNow = wantPlaying ? timeline.streamTimeAt(now) : null;
  if (streamNow !== null) view.prune(streamNow - 30);
}

let lastDrawn = 0;

/** Scroll the spectrogram, at most DRAW_FPS times a second: smooth enough, and light on a phone. */
function animate(now) {
  if (wantPlaying && now - lastDrawn >= 1000 / DRAW_FPS) {
    lastDrawn = now;
    view.setTime(timeline.streamTimeAt(player.mediaTime));
  }
  requestAnimationFrame(animate);
}

function showPlayButton() {
  const button = $("play");
  button.textContent = wantPlaying ? "Stop" : "Play";
  button.setAttribute("aria-pressed", String(wantPlaying));
}

async function togglePlay() {
  wantPlaying = !wantPlaying;
  showPlayButton();
  if (!wantPlaying) {
    player.stop();
    return;
  }
  try {
    await player.play(liveEdge);
  } catch (error) {
    wantPlaying = false;
    showPlayButton();
    showError(`playback: ${error.message}`);
  }
}

function download() {
  if (recording.empty) return;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(recording.toBlob());
  const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
  link.download = `jam-${membership.room || "room"}-${stamp}.mp3`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    flash(button, "Copied");
  } catch {
    flash(button, "Select and copy the link");
  }
}

function flash(button, text) {
  const original = button.textContent;
  button.textContent = text;
  setTimeout(() => {
    button.textContent = original;
  }, 1500);
}

function formatTime(seconds) {
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

$("play").addEventListener("click", togglePlay);
$("volume").addEventListener("input", (event) => {
  player.volume = Number(event.target.value);
});
player.volume = Number($("volume").value);
$("download").addEventListener("click", download);
$("copy-listen").addEventListener("click", (event) => membership.listenUrl && copy(membership.listenUrl, event.currentTarget));
$("copy-control").addEventListener("click", (event) => membership.controlUrl && copy(membership.controlUrl, event.currentTarget));
window.addEventListener("error", (event) => {
  stats.lastError = String(event.message);
});

setInterval(updateStatus, STATUS_EVERY_MS);
requestAnimationFrame(animate);
connection.open();
