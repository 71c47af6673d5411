"""The built-in ``mini`` model: riffusion's diffusers layout at 16x VAE downsampling, loaded like any checkpoint."""

from __future__ import annotations

import base64
import io
import json
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.audio.dsp import SpectrogramConverter
from pipeline.audio.params import SpectrogramParams
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.model.loading import CheckpointError, load_pipeline
from pipeline.model.mini import (
    LATENT_CHANNELS,
    LATENT_SIZE,
    MINI_DEFAULT_DENOISING,
    MINI_DEFAULT_STEPS,
    MINI_DIRECTORY,
    MINI_GUIDANCE_RESCALE,
    MINI_NOTE,
    build_mini_text_encoder,
    build_mini_tokenizer,
    build_mini_unet,
    build_mini_vae,
)
from pipeline.music.clip import INSTRUMENTS, ClipSpec
from pipeline.music.dataset import clip_pixels, spec_labels
from pipeline.render import render_clip
from pipeline.seeds import SeedLibrary
from pipeline.training.checkpoints import step_generator
from pipeline.training.classifier import JudgeSettings, image_pixels, judge_outputs, train_judge
from pipeline.training.export import export_model
from pipeline.training.vae import VaeSettings, random_crops, reconstruction_loss
from tests.server_support import join, run, running_server

SHIPPED = (MINI_DIRECTORY / "model_index.json").exists()


def one_clip_request(prompt: str, steps: int = 4) -> ClipRequest:
    return ClipRequest(PromptInput(prompt, seed=3), PromptInput(prompt, seed=4), alpha=0.0,
                       seed_image=SeedLibrary().load_seed("og_beat"), num_inference_steps=steps)


@pytest.fixture(scope="module")
def untrained_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini architecture with fresh weights, exported exactly as training exports it."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory:
        tokenizer = build_mini_tokenizer(Path(directory))
    out = tmp_path_factory.mktemp("mini") / "model"
    return export_model(out, build_mini_unet(), build_mini_vae(), build_mini_text_encoder(len(tokenizer)), tokenizer,
                        scale=0.5, card={"untrained": True})


def test_export_is_a_diffusers_directory_under_40_mb(untrained_directory: Path) -> None:
    for folder in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (untrained_directory / folder).is_dir()
    index = json.loads((untrained_directory / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    size = sum(path.stat().st_size for path in untrained_directory.rglob("*") if path.is_file())
    assert size < 40e6


def test_directory_loads_with_32x32_latents_and_renders_a_5_12_s_clip(untrained_directory: Path) -> None:
    model = load_pipeline(str(untrained_directory), device="cpu")
    pipe = model.pipeline
    assert pipe.latent_shape((512, 512)) == (1, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
    assert pipe.vae_scale_factor == 16
    assert pipe.vae.config.scaling_factor == pytest.approx(0.5)
    clip = render_clip(pipe, SpectrogramConverter(SpectrogramParams()), one_clip_request("solo piano"))
    assert clip.image.size == (512, 512)
    assert clip.duration == pytest.approx(5.12)


def test_caption_words_are_single_tokens(untrained_directory: Path) -> None:
    model = load_pipeline(str(untrained_directory), device="cpu", freeze=False)
    tokenizer = model.pipeline.tokenizer
    ids = tokenizer("church bells ringing over a lo-fi hip hop beat", add_special_tokens=False).input_ids
    assert len(ids) == 11  # one a word; "lo-fi" is three: CLIP splits on the hyphen


def test_vae_training_crops_span_the_whole_height_on_the_latent_grid() -> None:
    columns = (np.arange(512) // 2).astype(np.uint8)  # each column's grey level says where it was
    pixels = np.broadcast_to(columns, (3, 512, 512)).copy()
    settings = VaeSettings()
    crops = random_crops(pixels, settings, step_generator(settings.seed, 0))
    assert crops.shape == (settings.batch, 3, 512, settings.crop_width)
    first_columns = ((crops[:, 0, 0, 0] + 1) * 127.5).round().long() * 2
    assert (first_columns % 16 == 0).all()


def test_vae_loss_keeps_a_noise_textures_loudness() -> None:
    """A plain L1 prefers a texture's median (lighter here: mostly quiet, a few loud pixels); ours its mean."""
    generator = torch.Generator().manual_seed(0)
    texture = torch.where(torch.rand(1, 3, 64, 64, generator=generator) < 0.2, 0.8, -0.6)
    median, mean = torch.full_like(texture, -0.6), torch.full_like(texture, float(texture.mean()))
    plain = VaeSettings(gradient_weight=0.0, pooled_weight=0.0)
    assert reconstruction_loss(median, texture, plain) < reconstruction_loss(mean, texture, plain)
    assert reconstruction_loss(mean, texture, VaeSettings()) < reconstruction_loss(median, texture, VaeSettings())


@pytest.mark.skipif(not SHIPPED, reason="no mini weights in pipeline/model/mini yet")
def test_load_pipeline_mini_is_the_shipped_directory() -> None:
    model = load_pipeline("mini", device="cpu")
    assert model.checkpoint == "mini" and not model.demo
    assert any("not riffusion" in note for note in model.notes)
    clip = render_clip(model.pipeline, SpectrogramConverter(SpectrogramParams()), one_clip_request("solo piano", 20))
    assert clip.duration == pytest.approx(5.12)
    assert np.std(np.asarray(clip.image.convert("L"), dtype=np.float32)) > 5  # not a blank page


def test_mini_rescales_guidance_by_default_and_other_checkpoints_do_not(
    untrained_directory: Path, monkeypatch
) -> None:
    import pipeline.model.loading as loading

    monkeypatch.setattr(loading, "MINI_DIRECTORY", untrained_directory)
    mini = load_pipeline("mini", device="cpu", freeze=False)
    assert mini.pipeline.guidance_rescale == MINI_GUIDANCE_RESCALE > 0
    assert f"guidance rescale: {MINI_GUIDANCE_RESCALE}" in mini.notes
    assert load_pipeline("mini", device="cpu", freeze=False, guidance_rescale=0.0).pipeline.guidance_rescale == 0.0
    assert load_pipeline("tiny", device="cpu").pipeline.guidance_rescale == 0.0
    assert load_pipeline("tiny", device="cpu", guidance_rescale=0.3).pipeline.guidance_rescale == 0.3


def test_serve_refuses_a_guidance_rescale_outside_0_to_1(capsys) -> None:
    from jamserver.cli import main as jamserver_main

    with pytest.raises(SystemExit) as exit_info:
        jamserver_main(["serve", "--checkpoint", "tiny", "--guidance-rescale", "1.5"])
    assert exit_info.value.code == 2
    assert "argument --guidance-rescale: must be in [0, 1], got 1.5" in capsys.readouterr().err


def test_unreachable_checkpoint_falls_back_to_mini(untrained_directory: Path, monkeypatch, tmp_path: Path) -> None:
    import pipeline.model.loading as loading

    monkeypatch.setattr(loading, "MINI_DIRECTORY", untrained_directory)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: the hub id cannot be had
    model = load_pipeline("riffusion/riffusion-model-v1", device="cpu", fallback=True, freeze=False)
    assert model.checkpoint == "mini" and not model.demo
    assert model.description == MINI_NOTE and "not riffusion" in model.description
    assert any(note.startswith("fell back to 'mini'") for note in model.notes)


def test_without_mini_weights_the_fallback_is_tiny(monkeypatch, tmp_path: Path) -> None:
    import pipeline.model.loading as loading

    monkeypatch.setattr(loading, "MINI_DIRECTORY", tmp_path / "absent")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    model = load_pipeline("riffusion/riffusion-model-v1", device="cpu", fallback=True, freeze=False)
    assert model.checkpoint == "tiny" and model.demo
    with pytest.raises(CheckpointError, match="train_mini"):
        load_pipeline("mini", device="cpu")


def _rest_image(server, prompt: str, seed: int) -> np.ndarray:
    """One clip from the server's REST endpoint at a mini room's defaults (img2img from og_beat, the generator's
    groove, at denoising 0.9), as (512, 512) grey pixels."""
    side = {"prompt": prompt, "seed": seed, "denoising": MINI_DEFAULT_DENOISING, "guidance": 7.0}
    body = {"alpha": 0.0, "num_inference_steps": MINI_DEFAULT_STEPS, "seed_image_id": "og_beat", "start": side,
            "end": side}
    request = urllib.request.Request(server.http_url + "/run_inference/", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        output = json.loads(response.read())
    jpeg = base64.b64decode(output["image"].split(",", 1)[1])
    return image_pixels(Image.open(io.BytesIO(jpeg)))


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED, reason="no mini weights in pipeline/model/mini yet")
def test_server_renders_solo_piano_and_drums_only_that_a_judge_tells_apart(tmp_path: Path) -> None:
    """End to end: the server on mini, two prompts, and a judge trained only on the generator's clips."""
    specs = [ClipSpec.from_seed(900 + i, lead=("piano", "drums")[i % 2]) for i in range(40)]
    pixels = np.stack([clip_pixels(spec) for spec in specs])
    judge = train_judge(pixels, [spec_labels(spec) for spec in specs], JudgeSettings(epochs=15, batch=16))
    piano, drums = INSTRUMENTS.index("piano"), INSTRUMENTS.index("drums")
    with running_server("--checkpoint", "mini", log_dir=tmp_path) as server:
        images = {prompt: [_rest_image(server, prompt, seed) for seed in (1, 2)] for prompt in ("solo piano", "drums only")}
    for prompt, wanted, other in (("solo piano", piano, drums), ("drums only", drums, piano)):
        probabilities, _, _ = judge_outputs(judge, np.stack(images[prompt]))
        assert (probabilities[:, wanted] > probabilities[:, other]).all(), (prompt, probabilities[:, [piano, drums]])


async def _welcome(url: str) -> dict:
    """The welcome frame of a new room's host."""
    import websockets

    async with websockets.connect(url) as ws:
        return await join(ws)


def test_serve_steps_and_denoising_options_set_a_new_rooms_defaults(tmp_path: Path) -> None:
    with running_server("--steps", "12", "--denoising", "0.6", log_dir=tmp_path) as server:
        frame = run(_welcome(server.ws_url))
    assert frame["settings"]["num_inference_steps"] == 12 and frame["settings"]["denoising"] == 0.6


def test_serve_refuses_a_denoising_outside_0_to_1(caplog) -> None:
    from jamserver.cli import main as jamserver_main

    assert jamserver_main(["serve", "--checkpoint", "tiny", "--denoising", "1.5"]) == 2
    assert "bad option: denoising must be in (0, 1], got 1.5" in caplog.text


@pytest.mark.skipif(not SHIPPED, reason="no mini weights in pipeline/model/mini yet")
def test_serve_on_mini_defaults_to_its_real_time_steps_and_says_what_it_is(tmp_path: Path) -> None:
    with running_server("--checkpoint", "mini", log_dir=tmp_path) as server:
        frame = run(_welcome(server.ws_url))
    assert frame["settings"]["num_inference_steps"] == MINI_DEFAULT_STEPS
    assert frame["settings"]["denoising"] == MINI_DEFAULT_DENOISING
    assert frame["model"]["checkpoint"] == "mini" and "not riffusion" in frame["model"]["description"]


def test_min_snr_weighted_v_error_is_min_snr_times_the_clean_latent_error() -> None:
    from pipeline.model.mini import build_mini_scheduler
    from pipeline.training.unet import MIN_SNR_GAMMA, min_snr_weights

    scheduler = build_mini_scheduler()
    assert scheduler.config.prediction_type == "v_prediction"  # what the training loss below is about
    alpha_bars = scheduler.alphas_cumprod.float()
    snr = alpha_bars / (1 - alpha_bars)
    generator = torch.Generator().manual_seed(0)
    latent, noise, error = (torch.randn(1000, 64, generator=generator) for _ in range(3))
    a = alpha_bars.view(-1, 1)
    velocity = a.sqrt() * noise - (1 - a).sqrt() * latent
    noisy = a.sqrt() * latent + (1 - a).sqrt() * noise
    predicted = velocity + 0.1 * error
    # The scheduler's own reading of a v prediction as a clean latent.
    clean = a.sqrt() * noisy - (1 - a).sqrt() * predicted
    weighted_v = min_snr_weights(alpha_bars) * ((predicted - velocity) ** 2).mean(-1)
    clean_error = ((clean - latent) ** 2).mean(-1)
    torch.testing.assert_close(weighted_v, torch.clamp(snr, max=MIN_SNR_GAMMA) * clean_error, rtol=1e-3, atol=1e-7)
    weights = min_snr_weights(alpha_bars)
    assert weights[0] < 0.01 and weights[-1] < 0.01  # nearly clean and pure noise both count for little in v
    peak = int(weights.argmax())
    assert snr[peak + 1] <= MIN_SNR_GAMMA < snr[peak - 1]  # the most where SNR meets gamma


def test_caption_stage_teaches_the_encoder_to_name_the_lead_of_held_out_phrasings(tmp_path: Path) -> None:
    from pipeline.training.text import TextSettings, train_text_encoder
    from pipeline.training.unet import CaptionTokens

    labels = [spec_labels(ClipSpec.from_seed(seed)) for seed in range(400)]
    with tempfile.TemporaryDirectory() as directory:
        tokenizer = build_mini_tokenizer(Path(directory))
    torch.manual_seed(0)
    encoder = build_mini_text_encoder(len(tokenizer))
    tokens = CaptionTokens(tokenizer, encoder)
    settings = TextSettings(steps=250, batch=32)
    encoder, summary = train_text_encoder(encoder, labels, tokens, tmp_path / "text.pt", settings)
    # Held-out phrasings always name the lead; 9 leads, so chance is 11%.
    assert summary["lead_accuracy_held_out_templates"] >= 0.8, summary
    assert not any(parameter.requires_grad for parameter in encoder.parameters())  # frozen for the UNet stage
    piano, drums = (encoder(tokens([text])).pooler_output for text in ("solo piano", "drums only"))
    resumed, _ = train_text_encoder(build_mini_text_encoder(len(tokenizer)), labels, tokens, tmp_path / "text.pt",
                                    settings)
    assert torch.equal(resumed(tokens(["solo piano"])).pooler_output, piano)  # loaded, not trained again
    assert not torch.allclose(piano, drums, atol=0.1)
