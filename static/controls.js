// The host's controls: prompt box with examples and a dice, seed image picker, denoising and
// alpha-velocity sliders, cut-ins on or off, pause/resume. Listeners never see this panel; the server refuses
// control messages from them anyway.
import { $ } from "./dom.js";

export const EXAMPLE_PROMPTS = [
  "church bells on sunday",
  "jazz with piano",
  "lofi hip hop beat",
  "funky bass groove",
  "acoustic folk fiddle",
  "techno with deep kick",
  "reggae guitar skank",
  "ambient synth pads",
  "bossa nova guitar",
  "dubstep wobble bass",
];

// slider element id -> settings field
const SLIDERS = [["denoising", "denoising"], ["alpha-velocity", "alpha_velocity"]];

export class Controls {
  /** @param {(message: object) => boolean} send delivers a control message; false if offline */
  constructor(send) {
    this.send = send;
    this.paused = false;
    this.panel = $("controls");
    this.input = $("prompt-input");
    $("prompt-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.submitPrompt();
    });
    $("dice").addEventListener("click", () => this.rollDice());
    $("pause").addEventListener("click", () => this.send({ type: this.paused ? "resume" : "pause" }));
    for (const [id, field] of SLIDERS) this.bindSlider(id, field);
    $("cut-in").addEventListener("change", (event) => this.send({ type: "settings", cut_in: event.target.checked }));
    this.renderExamples();
  }

  show(visible) {
    this.panel.hidden = !visible;
  }

  submitPrompt() {
    const prompt = this.input.value.trim();
    if (!prompt) {
      this.input.focus();
      return;
    }
    if (this.send({ type: "prompt", prompt })) this.input.value = "";
  }

  rollDice() {
    const others = EXAMPLE_PROMPTS.filter((prompt) => prompt !== this.input.value);
    this.input.value = others[Math.floor(Math.random() * others.length)];
    this.input.focus();
  }

  renderExamples() {
    const list = $("examples");
    for (const prompt of EXAMPLE_PROMPTS.slice(0, 5)) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "chip";
      button.textContent = prompt;
      button.addEventListener("click", () => {
        this.input.value = prompt;
        this.input.focus();
      });
      list.append(button);
    }
  }

  bindSlider(id, field) {
    const slider = $(id);
    const output = $(`${id}-value`);
    slider.addEventListener("input", () => {
      output.textContent = Number(slider.value).toFixed(2);
    });
    slider.addEventListener("change", () => this.send({ type: "settings", [field]: Number(slider.value) }));
  }

  /** Shape the inputs by the server's limits (welcome.limits): prompt length and the sliders' ranges. */
  applyLimits(limits) {
    if (Number.isInteger(limits.prompt_chars)) this.input.maxLength = limits.prompt_chars;
    for (const [id, field] of SLIDERS) {
      const range = limits[field];
      if (!range) continue;
      const slider = $(id);
      // An exclusive minimum (denoising > 0) starts one step above it.
      slider.min = range.min_inclusive ? range.min : range.min + Number(slider.step);
      slider.max = range.max;
    }
  }

  /** Show the room's settings (from welcome and every later "settings" frame). */
  applySettings(settings) {
    for (const [id, field] of SLIDERS) {
      if (typeof settings[field] !== "number") continue;
      $(id).value = settings[field];
      $(`${id}-value`).textContent = settings[field].toFixed(2);
    }
    if (typeof settings.cut_in === "boolean") $("cut-in").checked = settings.cut_in;
    if (settings.seed_image_id) {
      const radio = document.querySelector(`input[name="seed-image"][value="${CSS.escape(settings.seed_image_id)}"]`);
      if (radio) radio.checked = true;
    }
  }

  setPaused(paused) {
    this.paused = paused;
    $("pause").textContent = paused ? "Resume generation" : "Pause generation";
    $("pause").setAttribute("aria-pressed", String(paused));
  }

  /** Build the seed picker from the welcome's ids, with descriptions from GET /seed_images. */
  async renderSeedPicker(seedIds, selectedId) {
    const details = await fetchSeedDetails();
    const picker = $("seed-options");
    picker.replaceChildren();
    for (const id of seedIds) {
      const info = details.get(id) || {};
      const label = document.createElement("label");
      label.className = "seed";
      label.title = info.description || id;
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = "seed-image";
      radio.value = id;
      radio.checked = id === selectedId;
      radio.addEventListener("change", () => this.send({ type: "settings", seed_image_id: id }));
      const frame = document.createElement("span");
      frame.className = "seed-frame";
      const image = document.createElement("img");
      image.src = `/seed_images/${encodeURIComponent(id)}.png`;
      image.alt = "";
      image.loading = "lazy";
      frame.append(image);
      const caption = document.createElement("span");
      const name = info.custom ? "your loop" : id;
      caption.textContent = info.bpm ? `${name} · ${info.bpm.toFixed(info.custom ? 1 : 0)} bpm` : name;
      label.append(radio, frame, caption);
      picker.append(label);
    }
  }
}

/** id -> index row from GET /seed_images; empty when the index cannot be read (ids still work). */
async function fetchSeedDetails() {
  try {
    const response = await fetch("/seed_images");
    if (!response.ok) return new Map();
    const rows = await response.json(); // [{id, kind, bpm, beats, description, url}]
    return new Map(rows.map((row) => [row.id, row]));
  } catch {
    return new Map();
  }
}
