// Your own loop as the seed: pick a file or drop one on the seed picker. The server finds its tempo, fits it
// to 5.12 s on its beat grid and answers {id, bpm, beats, ...}; `onSeed` then adds it to the picker and switches
// the room to it, so everyone in the room hears riffs on it.
import { $ } from "./dom.js";

export class SeedUpload {
  /** @param {(answer: object) => void} onSeed called with the server's answer for each accepted upload */
  constructor(onSeed) {
    this.onSeed = onSeed;
    this.input = $("seed-file");
    this.status = $("seed-upload-status");
    this.dropZone = $("seed-picker");
    this.busy = false;
    this.input.addEventListener("change", () => {
      if (this.input.files.length) this.upload(this.input.files[0]);
      this.input.value = "";
    });
    for (const type of ["dragenter", "dragover"]) {
      this.dropZone.addEventListener(type, (event) => {
        event.preventDefault();
        this.dropZone.classList.add("dropping");
      });
    }
    this.dropZone.addEventListener("dragleave", () => this.dropZone.classList.remove("dropping"));
    this.dropZone.addEventListener("drop", (event) => {
      event.preventDefault();
      this.dropZone.classList.remove("dropping");
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (file) this.upload(file);
    });
  }

  /** Send one file; the answer (or the server's reason for refusing it) is shown under the picker. */
  async upload(file) {
    if (this.busy) return;
    this.busy = true;
    this.say(`analysing ${file.name}…`);
    try {
      const form = new FormData();
      form.append("file", file, file.name);
      const response = await fetch("/seed_images", { method: "POST", body: form });
      const answer = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
      if (!response.ok) {
        this.say(`${file.name}: ${answer.error || response.status}`, true);
        return;
      }
      this.say(`${file.name}: ${describe(answer)}`);
      this.onSeed(answer);
    } catch (error) {
      this.say(`${file.name}: upload failed (${error.message})`, true);
    } finally {
      this.busy = false;
    }
  }

  say(text, failed = false) {
    this.status.textContent = text;
    this.status.classList.toggle("failed", failed);
  }
}

/** "120.3 BPM, 10 beats stretched by +2.1%", or why it has no tempo. */
export function describe(answer) {
  if (answer.bpm == null) return `no steady beat found (${answer.fit})`;
  const heard = answer.source_bpm != null ? `${answer.source_bpm.toFixed(1)} BPM` : `${answer.bpm.toFixed(1)} BPM`;
  if (answer.fit !== "stretched") return `${heard}, ${answer.beats} beats`;
  const percent = (100 * (answer.stretch - 1)).toFixed(1);
  return `${heard}, ${answer.beats} beats stretched by ${percent >= 0 ? "+" : ""}${percent}% to ${answer.bpm.toFixed(1)} BPM`;
}
