"""Model loading: which checkpoint, which device and dtype, and the optional speed knobs.

:func:`load_pipeline` accepts a Hugging Face hub id (resolved through huggingface_hub's cache, so a prior download or
``HF_HUB_OFFLINE=1`` works), a local diffusers directory, ``"mini"`` for the built-in model trained on the project's
synthesised music (the fallback when the hub cannot be had), or ``"tiny"`` for the random-weight demo model. Only the
files :func:`pipeline.model.hub.select_files` picks are downloaded and loaded: one weight format per component, the
fp16 variant for fp16. The safety checker and feature extractor of the riffusion checkpoint are never downloaded nor
loaded (they flag spectrograms as unsafe and cost memory), nor its ``.ckpt`` and traced UNet.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from pipeline.diffusion.riffusion import PipelineComponents, RiffusionPipeline
from pipeline.model.choices import DEFAULT_CHECKPOINT, SCHEDULERS, TINY_CHECKPOINT
from pipeline.model.frozen import freeze_components
from pipeline.model.hub import HubAccessError, SelectionError, fetch_checkpoint, list_directory, select_files
from pipeline.model.mini import (
    MINI_CHECKPOINT,
    MINI_DEFAULT_DENOISING,
    MINI_DEFAULT_STEPS,
    MINI_DIRECTORY,
    MINI_GUIDANCE_RESCALE,
    MINI_NOTE,
)
from pipeline.model.tiny import build_tiny_components

logger = logging.getLogger(__name__)

COMPONENT_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DEMO_WARNING = "the built-in 'tiny' demo model has random weights and makes NO music, only noise-like spectrograms"

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class CheckpointError(RuntimeError):
    """A checkpoint (or tiny VAE, or LoRA) could not be found or loaded. The message names it."""

    def __init__(self, checkpoint: str, reason: str) -> None:
        super().__init__(f"checkpoint {checkpoint!r}: {reason}")
        self.checkpoint = checkpoint
        self.reason = reason


class CheckpointFacts:
    """What the UI and a server's defaults say about a checkpoint, known by its name alone (loaded or not)."""

    checkpoint: str

    @property
    def description(self) -> str | None:
        """What the UI should say about a built-in model that is not riffusion (None for real checkpoints)."""
        return checkpoint_description(self.checkpoint)

    @property
    def recommended_settings(self) -> dict[str, float]:
        """Room settings a server should default to for this model (empty: the usual defaults)."""
        return recommended_settings(self.checkpoint)


@dataclass
class LoadedModel(CheckpointFacts):
    """A ready pipeline plus what was actually loaded, for logs, /healthz and the UI."""

    pipeline: RiffusionPipeline
    checkpoint: str
    device: torch.device
    dtype: torch.dtype
    demo: bool
    notes: list[str] = field(default_factory=list)


def checkpoint_description(checkpoint: str) -> str | None:
    """What the UI should say about a built-in model that is not riffusion (None for real checkpoints)."""
    return {MINI_CHECKPOINT: MINI_NOTE, TINY_CHECKPOINT: DEMO_WARNING}.get(checkpoint)


def recommended_settings(checkpoint: str) -> dict[str, float]:
    """Room settings (`Settings` field names) a server should default to for this checkpoint."""
    if checkpoint == MINI_CHECKPOINT:
        return {"num_inference_steps": MINI_DEFAULT_STEPS, "denoising": MINI_DEFAULT_DENOISING}
    return {}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else CUDA, else Apple MPS, else CPU."""
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device: {device!r} is not a torch device ({error})") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA (as the original), fp32 elsewhere: fp16 is unreliable on MPS and far slower on CPUs."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype: expected one of {sorted(DTYPES)} or a torch.dtype, got {dtype!r}")


def hub_cache_options() -> dict[str, Any]:
    """Cache directory and offline mode read from the environment now, not when huggingface_hub was imported."""
    cache_dir = os.environ.get("HF_HUB_CACHE")
    if cache_dir is None and os.environ.get("HF_HOME"):
        cache_dir = os.path.join(os.environ["HF_HOME"], "hub")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return {"cache_dir": cache_dir, "local_files_only": offline}


def resolve_checkpoint_directory(checkpoint: str, dtype: torch.dtype = torch.float32) -> Path:
    """A local diffusers directory as is; a hub id through the hub cache, fetching only the files it needs;
    ``"mini"``: the directory shipped inside this package."""
    path = MINI_DIRECTORY if checkpoint == MINI_CHECKPOINT else Path(checkpoint).expanduser()
    if path.is_dir():
        directory = path
    elif checkpoint == MINI_CHECKPOINT:
        raise CheckpointError(checkpoint, f"no weights in {MINI_DIRECTORY} (scripts/train_mini.py makes them)")
    elif path.exists() or checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") != 1:
        raise CheckpointError(checkpoint, "not a diffusers directory nor a hub id like 'owner/name'")
    else:
        directory = _download_from_hub(checkpoint, half=dtype == torch.float16)
    missing = [name for name in COMPONENT_FOLDERS if not (directory / name).is_dir()]
    if missing:
        raise CheckpointError(checkpoint, f"{directory} lacks the diffusers subfolder(s) {', '.join(missing)}")
    return directory


def _download_from_hub(repo_id: str, *, half: bool) -> Path:
    """Fetch what the pipeline needs (progress in the log); offline, or when the hub cannot be reached, the cache."""
    from huggingface_hub import snapshot_download

    options = hub_cache_options()
    online_failure = "HF_HUB_OFFLINE is set"
    if not options["local_files_only"]:
        try:
            return fetch_checkpoint(repo_id, half=half, cache_dir=options["cache_dir"], report=logger.info)
        except (HubAccessError, SelectionError) as error:
            raise CheckpointError(repo_id, str(error)) from None
        except Exception as error:  # noqa: BLE001 - unreachable hub, timeouts, server errors: try the cache
            online_failure = f"the hub cannot be reached ({type(error).__name__}: {_first_line(error)})"
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=options["cache_dir"]))
    except Exception:  # noqa: BLE001 - the hub raises many types: not cached, bad id
        raise CheckpointError(repo_id, f"not in the hub cache, and {online_failure}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]  # the hub's messages run to several lines


def load_components(directory: Path, dtype: torch.dtype) -> PipelineComponents:
    """Load the five diffusers components of a local checkpoint directory (never the safety checker).

    Each weight component loads the one weight set :func:`~pipeline.model.hub.select_files` picks from the
    directory (the same choice that decided what to download).
    """
    weights = select_files(list_directory(directory), half=dtype == torch.float16).weights
    scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
    scheduler_class = getattr(diffusers, scheduler_config["_class_name"])
    text_encoder = CLIPTextModel.from_pretrained(directory, subfolder="text_encoder",
                                                 **weights["text_encoder"].load_options()).to(dtype)
    return PipelineComponents(
        unet=UNet2DConditionModel.from_pretrained(directory, subfolder="unet", torch_dtype=dtype,
                                                  **weights["unet"].load_options()),
        vae=AutoencoderKL.from_pretrained(directory, subfolder="vae", torch_dtype=dtype,
                                          **weights["vae"].load_options()),
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(directory, subfolder="tokenizer"),
        scheduler=patch_scheduler_config(scheduler_class.from_pretrained(directory, subfolder="scheduler")),
    )


def patch_scheduler_config(scheduler: Any) -> Any:
    """Fix old scheduler configs the way diffusers' StableDiffusionPipeline does, which the original loaded through.

    riffusion-model-v1's diffusers 0.4.0 PNDM config has no ``steps_offset`` (0 by default: every timestep one
    off) and DDIM-style schedulers built from it would clip samples; the pipeline sets 1 and off, and so does this.
    """
    changes: dict[str, Any] = {}
    if getattr(scheduler.config, "steps_offset", 1) != 1:
        changes["steps_offset"] = 1
    if getattr(scheduler.config, "clip_sample", False) is True:
        changes["clip_sample"] = False
    if changes:
        scheduler.register_to_config(**changes)
    return scheduler


def _load_checkpoint(checkpoint: str, dtype: torch.dtype) -> PipelineComponents:
    directory = resolve_checkpoint_directory(checkpoint, dtype)
    try:
        return load_components(directory, dtype)
    except SelectionError as error:
        raise CheckpointError(checkpoint, f"{directory}: {error}") from error
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise CheckpointError(checkpoint, f"cannot load {directory} ({type(error).__name__}: {error})") from error


def make_scheduler(name: str, base_scheduler: Any) -> Any:
    """Build scheduler ``name`` from the checkpoint's own config (its betas and timestep spacing carry over).

    "dpm++" and "lcm" reach good results in far fewer steps (20 and 4-8): the cheapest speed knob there is.
    "lcm" is meant for LCM-distilled weights, such as an LCM-LoRA (see ``lora``), used with guidance <= 1.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler: expected one of {sorted(SCHEDULERS)}, got {name!r}")
    return patch_scheduler_config(getattr(diffusers, SCHEDULERS[name]).from_config(base_scheduler.config))


def load_tiny_vae(source: str, dtype: torch.dtype) -> AutoencoderTiny:
    """TAESD-style AutoencoderTiny from a directory or hub id: decodes ~10x cheaper than SD's VAE, slightly blurrier."""
    try:
        return AutoencoderTiny.from_pretrained(source, torch_dtype=dtype, **hub_cache_options())
    except Exception as error:  # noqa: BLE001 - any failure means "not a usable tiny VAE"
        raise CheckpointError(source, f"cannot load it as an AutoencoderTiny ({type(error).__name__}: {error})")


def apply_lora(components: PipelineComponents, source: str) -> None:
    """Load a LoRA (diffusers, kohya or peft layout; file, directory or hub id) and fuse it into the weights.

    Fusing removes the LoRA's per-call cost, so an LCM-LoRA runs at the speed of the plain model.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as LoraLoader

    path = Path(source).expanduser()
    location: dict[str, Any] = {}
    if path.is_file():
        source, location = str(path.parent), {"weight_name": path.name}
    try:
        state_dict, network_alphas = LoraLoader.lora_state_dict(source, **location, **hub_cache_options())
        LoraLoader.load_lora_into_unet(state_dict, network_alphas, unet=components["unet"], adapter_name="lora")
        if any(key.startswith("text_encoder.") for key in state_dict):
            text_encoder = components["text_encoder"]
            LoraLoader.load_lora_into_text_encoder(
                state_dict, network_alphas, text_encoder, prefix="text_encoder", adapter_name="lora"
            )
            _fuse_lora_layers(text_encoder)
    except Exception as error:  # noqa: BLE001 - any failure means "not a usable LoRA"
        raise CheckpointError(source, f"cannot load it as a LoRA ({type(error).__name__}: {error})")
    _fuse_lora_layers(components["unet"])


def _fuse_lora_layers(model: torch.nn.Module) -> None:
    from diffusers.utils.peft_utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    recurse_remove_peft_layers(model)
    if hasattr(model, "peft_config"):
        del model.peft_config
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False


def load_pipeline(
    checkpoint: str = DEFAULT_CHECKPOINT,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    scheduler: str | None = None,
    compile: bool = False,
    freeze: bool | None = None,
    channels_last: bool = False,
    tiny_vae: str | None = None,
    lora: str | None = None,
    guidance_rescale: float | None = None,
    fallback: bool = False,
) -> LoadedModel:
    """Load a riffusion pipeline ready to generate.

    Args:
        checkpoint: hub id, local diffusers directory, ``"mini"`` (built-in model trained on the project's synthesised
            music) or ``"tiny"`` (built-in demo model, random weights, makes no music).
        device: torch device; default CUDA, else MPS, else CPU.
        dtype: default fp16 on CUDA, fp32 elsewhere.
        scheduler: ``"ddim"``, ``"dpm++"``, ``"lcm"``, ``"pndm"``, ``"euler"`` or ``"euler-a"`` (ancestral);
            default: the checkpoint's own.
        compile: ``torch.compile`` the UNet. Pays off on CUDA for long sessions; the first steps (and each new
            batch size) compile for tens of seconds, and on CPU it needs a C++ compiler.
        freeze: trace and freeze the UNet and VAE decoder with TorchScript (:mod:`pipeline.model.frozen`); default: on
            for a CPU without ``compile``, where it makes a step ~30% faster and costs under a second.
        channels_last: NHWC memory format for UNet and VAE convolutions; faster on most GPUs and some CPUs.
        tiny_vae: directory or hub id of an AutoencoderTiny (e.g. ``madebyollin/taesd``) used instead of the
            checkpoint's VAE: much cheaper encode/decode at a small loss of detail.
        lora: file, directory or hub id of a LoRA (e.g. ``latent-consistency/lcm-lora-sdv1-5``), fused into the weights.
        guidance_rescale: in [0, 1], how far guided predictions are pulled back to the text prediction's spread
            (:func:`~pipeline.diffusion.batch.rescale_guidance`); default: mini's own, 0 (off) for other checkpoints.
        fallback: if the checkpoint cannot be had, log one warning and continue on ``"mini"`` (or ``"tiny"`` when
            mini's weights are missing too) instead of raising.

    Raises:
        CheckpointError: the checkpoint, tiny VAE or LoRA cannot be found or loaded (and ``fallback`` is off).
        ValueError: a bad device, dtype or scheduler name.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    notes: list[str] = []
    used = checkpoint
    if checkpoint == TINY_CHECKPOINT:
        components = build_tiny_components()
    else:
        try:
            components = _load_checkpoint(checkpoint, torch_dtype)
        except CheckpointError as error:
            if not fallback:
                raise
            components, used = _fallback_components(error, torch_dtype, notes)
    demo = used == TINY_CHECKPOINT
    if used in (MINI_CHECKPOINT, TINY_CHECKPOINT):
        notes.append(MINI_NOTE if used == MINI_CHECKPOINT else DEMO_WARNING)

    if scheduler is not None:
        components["scheduler"] = make_scheduler(scheduler, components["scheduler"])
        notes.append(f"scheduler: {scheduler}")
    if lora is not None:
        apply_lora(components, lora)
        notes.append(f"LoRA fused: {lora}")
    if tiny_vae is not None:
        components["vae"] = load_tiny_vae(tiny_vae, torch_dtype)
        notes.append(f"tiny VAE: {tiny_vae}")
    _place(components, torch_device, torch_dtype, channels_last=channels_last)
    if compile:
        components["unet"].compile()
        notes.append("UNet compiled with torch.compile")
    if freeze if freeze is not None else (torch_device.type == "cpu" and not compile):
        components = PipelineComponents(**freeze_components(components))
        notes.append("UNet and VAE decoder frozen with TorchScript")
    if guidance_rescale is None:
        guidance_rescale = MINI_GUIDANCE_RESCALE if used == MINI_CHECKPOINT else 0.0
    if guidance_rescale:
        notes.append(f"guidance rescale: {guidance_rescale}")
    return LoadedModel(
        pipeline=RiffusionPipeline.from_components(components, guidance_rescale=guidance_rescale),
        checkpoint=used,
        device=torch_device,
        dtype=torch_dtype,
        demo=demo,
        notes=notes,
    )


def _fallback_components(
    error: CheckpointError, dtype: torch.dtype, notes: list[str]
) -> tuple[PipelineComponents, str]:
    """The built-in ``mini`` model (it makes music) when its weights are here, else ``tiny``."""
    if error.checkpoint != MINI_CHECKPOINT:
        try:
            components = _load_checkpoint(MINI_CHECKPOINT, dtype)
        except CheckpointError as mini_error:
            notes.append(f"'mini' unavailable too: {mini_error.reason}")
        else:
            notes.append(f"fell back to 'mini': {error}")
            logger.warning("%s; falling back to %s", error, MINI_NOTE)
            return components, MINI_CHECKPOINT
    notes.append(f"fell back to 'tiny': {error}")
    logger.warning("%s; falling back to 'tiny': %s", error, DEMO_WARNING.upper())
    return build_tiny_components(), TINY_CHECKPOINT


def _place(components: PipelineComponents, device: torch.device, dtype: torch.dtype, *, channels_last: bool) -> None:
    """Move the modules to ``device``/``dtype`` for inference; NHWC convolutions if ``channels_last``."""
    for name in ("unet", "vae", "text_encoder"):
        module = components[name].to(device=device).eval().requires_grad_(False)
        if module.dtype != dtype:  # skip no-op casts: diffusers warns on every ``to(dtype)``
            module = module.to(dtype=dtype)
        if channels_last and name != "text_encoder":
            module.to(memory_format=torch.channels_last)
        components[name] = module
