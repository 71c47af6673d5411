"""Tiny copies of real Hugging Face model repositories, written into a real hub cache, for offline loading tests.

Built by the tests at toy dimensions (nothing is downloaded), with the real repositories' file layouts and config
formats:

* :data:`RIFFUSION_V1` at ``main``, a diffusers 0.4.0 export: ``model_index.json`` naming ``StableDiffusionPipeline``
  with a safety checker and a feature extractor; UNet ``sample_size`` 32; a VAE config without ``scaling_factor``
  and VAE attention weights under the old ``query/key/value/proj_attn`` names; ``.bin`` weights only; a tokenizer
  config with old ``"__type": "AddedToken"`` entries; a PNDM scheduler config without ``steps_offset``; and beside
  them ``safety_checker/``, ``unet_traced/``, a ``.ckpt`` and ``seed_images/``.
* :data:`FINETUNE`, a current-style fine-tune: safetensors and ``.bin`` weights, ``fp16`` and ``non_ema`` variants
  beside the fp32 ones, newer config keys (VAE ``scaling_factor``/``force_upcast``, scheduler ``timestep_spacing``),
  no safety checker, and a single-file checkpoint at the top.

Files no loader may read (:data:`NEVER_READ`) hold garbage, so reading one fails. The weight files of the fine-tune
carry a marker (one bias filled with a value per format and variant, :data:`MARKERS`) so a test can tell which file
was loaded. Toy sizes: the VAE config adds ``norm_num_groups`` (0.4.0 configs relied on its default of 32 groups,
too many channels for a fast test); every key the issue names keeps its old form.

The cache layout is the one huggingface_hub reads: ``models--ORG--NAME/blobs/<hash>`` holding contents (sha256 for
LFS files, the git blob sha1 for the others), ``snapshots/<commit>/<path>`` relative symlinks to them, and
``refs/main`` naming the commit. :func:`offline_env` gives the environment that loads from it offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from pipeline.model.tiny import SD15_SCHEDULER_CONFIG
from pipeline.model.tokenizer import BOS_TOKEN, EOS_TOKEN, build_offline_clip_tokenizer, offline_clip_vocabulary

RIFFUSION_V1 = "riffusion/riffusion-model-v1"
FINETUNE = "jamfixtures/riffusion-finetune"
TEXT_DIM = 32
LFS_SUFFIXES = (".bin", ".safetensors", ".ckpt", ".pt", ".png")
GARBAGE = b"GARBAGE: a loader must never read this file\n" + bytes(range(256)) * 4
# Paths (prefixes or suffixes) of files no loader may open, in either fixture.
NEVER_READ = ("safety_checker/", "unet_traced/", "feature_extractor/", "seed_images/", ".ckpt",
              "riffusion-finetune.safetensors")
# The bias each weight file of the fine-tune is filled with, by (format, variant), and which bias per component.
MARKERS = {("safetensors", None): 0.0, ("safetensors", "fp16"): 0.25, ("bin", None): 0.5, ("bin", "fp16"): 0.75,
           ("safetensors", "non_ema"): 1.0, ("bin", "non_ema"): 1.25}
MARKER_TENSORS = {"unet": "conv_out.bias", "vae": "decoder.conv_out.bias",
                  "text_encoder": "final_layer_norm.bias"}


@dataclass(frozen=True)
class HubRepo:
    """One repository written into a hub cache."""

    repo_id: str
    cache_dir: Path
    commit: str
    sizes: Mapping[str, int]  # repository path -> bytes, as the hub's file list reports them

    @property
    def snapshot(self) -> Path:
        org, name = self.repo_id.split("/")
        return self.cache_dir / f"models--{org}--{name}" / "snapshots" / self.commit


def offline_env(cache_dir: Path) -> dict[str, str]:
    """Environment that makes huggingface_hub (and the loader) read ``cache_dir`` and never the network."""
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(cache_dir.parent), "HF_HUB_CACHE": str(cache_dir),
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def is_never_read(path: str) -> bool:
    return any(path.startswith(p) or path.endswith(p) or f"/{p}" in path for p in NEVER_READ)


# -- the hub cache ------------------------------------------------------------------------------------------------


def blob_name(path: str, data: bytes) -> str:
    if path.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_cached_file(cache_dir: Path, repo_id: str, commit: str, path: str, data: bytes) -> Path:
    """Put one file of ``repo_id`` at ``commit`` (= ``main``) into the hub cache, as a download does; its path."""
    org, name = repo_id.split("/")
    root = Path(cache_dir) / f"models--{org}--{name}"
    blob = root / "blobs" / blob_name(path, data)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = root / "snapshots" / commit / path
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return link


def write_hub_repo(cache_dir: Path, repo_id: str, files: Mapping[str, bytes]) -> HubRepo:
    """Write ``files`` (repository path -> contents) as ``repo_id``'s ``main`` in the hub cache at ``cache_dir``."""
    commit = hashlib.sha1("".join(f"{p}:{blob_name(p, d)}" for p, d in sorted(files.items())).encode()).hexdigest()
    for path, data in files.items():
        add_cached_file(cache_dir, repo_id, commit, path, data)
    return HubRepo(repo_id, Path(cache_dir), commit, {path: len(data) for path, data in files.items()})


# -- toy modules ----------------------------------------------------------------------------------------------------


def _unet(sample_size: int) -> UNet2DConditionModel:
    """SD 1.5's four levels at toy width; cross-attention at 16x16 and in the middle only (fast on a CPU)."""
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(4, 8, 16, 16),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=TEXT_DIM, attention_head_dim=2,
    ).eval()


VAE_ARGS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "act_fn": "silu",
    "block_out_channels": [4, 4, 8, 8], "norm_num_groups": 4, "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}

TEXT_CONFIG_422: dict[str, Any] = {  # transformers 4.22's CLIPTextModel config, at toy width
    "_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"], "attention_dropout": 0.0,
    "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": TEXT_DIM,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 2,
    "num_hidden_layers": 2, "pad_token_id": 1, "projection_dim": TEXT_DIM, "torch_dtype": "float32",
    "transformers_version": "4.22.0.dev0", "vocab_size": len(offline_clip_vocabulary()),
}


def _text_encoder() -> CLIPTextModel:
    fields = {k: v for k, v in TEXT_CONFIG_422.items() if not k.startswith("_") and k != "architectures"}
    return CLIPTextModel(CLIPTextConfig(**fields)).eval()


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _torch_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def _tokenizer_vocab_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as directory:
        build_offline_clip_tokenizer(Path(directory))
        return {name: (Path(directory) / name).read_bytes() for name in ("vocab.json", "merges.txt")}


# -- riffusion/riffusion-model-v1 ----------------------------------------------------------------------------------


def _added_token(content: str, legacy_type: bool) -> dict[str, Any]:
    token = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **token} if legacy_type else token


def _old_vae_state(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """The VAE's weights under diffusers 0.4.0's attention names (query/key/value/proj_attn)."""
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = {}
    for key, value in vae.state_dict().items():
        if ".attentions." in key:
            for new, old in renames.items():
                key = key.replace(new, old)
        state[key] = value
    return state


def riffusion_v1_files() -> dict[str, bytes]:
    """riffusion-model-v1 ``main`` at toy size: diffusers 0.4.0 configs, ``.bin`` only, the unread extras."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1215)
        unet, text_encoder, vae = _unet(32), _text_encoder(), AutoencoderKL(**VAE_ARGS).eval()
    unet_config = {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.4.0",
                   **{k: v for k, v in unet.config.items() if k in UNET_040_KEYS}}
    # transformers 4.22 kept the "text_model." prefix and saved the position ids buffer
    text_state = {f"text_model.{key}": value for key, value in text_encoder.state_dict().items()}
    text_state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    files = {
        "model_index.json": _json({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.4.0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}),
        "unet/config.json": _json(unet_config),
        "unet/diffusion_pytorch_model.bin": _torch_bytes(unet.state_dict()),
        "vae/config.json": _json({"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.0", **VAE_ARGS}),
        "vae/diffusion_pytorch_model.bin": _torch_bytes(_old_vae_state(vae)),
        "text_encoder/config.json": _json(TEXT_CONFIG_422),
        "text_encoder/pytorch_model.bin": _torch_bytes(text_state),
        "tokenizer/tokenizer_config.json": _json({
            "add_prefix_space": False, "bos_token": _added_token(BOS_TOKEN, True), "do_lower_case": True,
            "eos_token": _added_token(EOS_TOKEN, True), "errors": "replace", "model_max_length": 77,
            "name_or_path": "openai/clip-vit-large-patch14", "pad_token": EOS_TOKEN,
            "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
            "unk_token": _added_token(EOS_TOKEN, True)}),
        "tokenizer/special_tokens_map.json": _json({
            "bos_token": _added_token(BOS_TOKEN, False), "eos_token": _added_token(EOS_TOKEN, False),
            "pad_token": EOS_TOKEN, "unk_token": _added_token(EOS_TOKEN, False)}),
        **{f"tokenizer/{name}": data for name, data in _tokenizer_vocab_files().items()},
        "scheduler/scheduler_config.json": _json({
            "_class_name": "PNDMScheduler", "_diffusers_version": "0.4.0", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
            "set_alpha_to_one": False, "skip_prk_steps": True, "trained_betas": None}),
        "feature_extractor/preprocessor_config.json": GARBAGE,
        "safety_checker/config.json": GARBAGE,
        "safety_checker/pytorch_model.bin": GARBAGE,
        "unet_traced/unet_traced.pt": GARBAGE,
        "riffusion-model-v1.ckpt": GARBAGE,
        "seed_images/og_beat.png": GARBAGE,
        "README.md": b"---\nlicense: creativeml-openrail-m\n---\n# Riffusion (toy copy for tests)\n",
        ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.ckpt filter=lfs diff=lfs merge=lfs -text\n",
    }
    return files


UNET_040_KEYS = ("act_fn", "attention_head_dim", "block_out_channels", "center_input_sample", "cross_attention_dim",
                 "down_block_types", "downsample_padding", "flip_sin_to_cos", "freq_shift", "in_channels",
                 "layers_per_block", "mid_block_scale_factor", "norm_eps", "norm_num_groups", "out_channels",
                 "sample_size", "up_block_types")


# -- a current-style fine-tune ---------------------------------------------------------------------------------------


def _saved_config(module: Any) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        module.save_config(directory) if hasattr(module, "save_config") else module.config.save_pretrained(directory)
        name = "scheduler_config.json" if isinstance(module, PNDMScheduler) else "config.json"
        return (Path(directory) / name).read_bytes()


def _marked_weights(component: str, state: Mapping[str, torch.Tensor], stem_bin: str,
                    stem_safetensors: str) -> dict[str, bytes]:
    """One weight file per format and variant, each with its marker bias."""
    files = {}
    for (fmt, variant), marker in MARKERS.items():
        if component != "unet" and variant == "non_ema":
            continue
        dtype = torch.float16 if variant == "fp16" else torch.float32
        marked = {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}
        marked[MARKER_TENSORS[component]] = torch.full_like(marked[MARKER_TENSORS[component]], marker)
        suffix = f".{variant}" if variant else ""
        if fmt == "bin":
            files[f"{component}/{stem_bin}{suffix}.bin"] = _torch_bytes(marked)
        else:
            contiguous = {key: value.contiguous() for key, value in marked.items()}
            data = safetensors.torch.save(contiguous, metadata={"format": "pt"})
            files[f"{component}/{stem_safetensors}{suffix}.safetensors"] = data
    return files


def finetune_files() -> dict[str, bytes]:
    """A fine-tune as saved by current diffusers/transformers: both formats, fp16 and non_ema variants."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2024)
        unet, text_encoder = _unet(64), _text_encoder()
        vae = AutoencoderKL(**VAE_ARGS, scaling_factor=0.18215, force_upcast=True).eval()
    scheduler = PNDMScheduler(**SD15_SCHEDULER_CONFIG, timestep_spacing="leading", prediction_type="epsilon")
    with tempfile.TemporaryDirectory() as directory:
        build_offline_clip_tokenizer(Path(directory) / "source").save_pretrained(Path(directory) / "tokenizer")
        tokenizer = {f"tokenizer/{path.name}": path.read_bytes()
                     for path in sorted((Path(directory) / "tokenizer").iterdir())}
    return {
        "model_index.json": _json({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.27.2",
            "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
            "safety_checker": [None, None], "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}),
        "unet/config.json": _saved_config(unet),
        **_marked_weights("unet", unet.state_dict(), "diffusion_pytorch_model", "diffusion_pytorch_model"),
        "vae/config.json": _saved_config(vae),
        **_marked_weights("vae", vae.state_dict(), "diffusion_pytorch_model", "diffusion_pytorch_model"),
        "text_encoder/config.json": _saved_config(text_encoder),
        **_marked_weights("text_encoder", text_encoder.state_dict(), "pytorch_model", "model"),
        **tokenizer,
        "scheduler/scheduler_config.json": _saved_config(scheduler),
        "riffusion-finetune.safetensors": GARBAGE,
        "README.md": b"---\nlibrary_name: diffusers\n---\n# A riffusion fine-tune (toy copy for tests)\n",
    }


def marker_of(module: torch.nn.Module, component: str) -> float:
    """The marker bias of a loaded fine-tune component: which weight file it came from (see MARKERS)."""
    return float(module.state_dict()[MARKER_TENSORS[component]].flatten()[0])


def build_hub_cache(cache_dir: Path) -> dict[str, HubRepo]:
    """Both fixtures in one hub cache, by repo id."""
    return {RIFFUSION_V1: write_hub_repo(cache_dir, RIFFUSION_V1, riffusion_v1_files()),
            FINETUNE: write_hub_repo(cache_dir, FINETUNE, finetune_files())}


# -- seed images of other widths, and a record of the files a process opens ----------------------------------------


def write_seed_library(directory: Path, widths: Mapping[str, int]) -> Path:
    """A seed folder with ``og_beat`` and, per id in ``widths``, og_beat tiled to that many columns (512 rows)."""
    from pipeline.seeds import SeedLibrary

    directory.mkdir(parents=True, exist_ok=True)
    og_beat = SeedLibrary().load_seed("og_beat")
    rows = [{"id": "og_beat", "kind": "seed", "bpm": None, "beats": None, "description": "", "file": "og_beat.png"}]
    og_beat.save(directory / "og_beat.png")
    for image_id, width in widths.items():
        tiled = og_beat.crop((0, 0, width, og_beat.height)) if width <= og_beat.width else og_beat.resize(
            (width, og_beat.height))
        tiled.save(directory / f"{image_id}.png")
        rows.append({"id": image_id, "kind": "seed", "bpm": None, "beats": None, "description": "",
                     "file": f"{image_id}.png"})
    (directory / "index.json").write_text(json.dumps(rows, indent=1))
    return directory


_OPENED: list[list[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _OPENED and isinstance(args[0], (str, Path)):
        _OPENED[-1].append(str(args[0]))


class OpenedFiles:
    """Records every path this process opens through Python while active (an audit hook, installed once)."""

    _installed = False

    def __enter__(self) -> list[str]:
        if not OpenedFiles._installed:
            import sys

            sys.addaudithook(_audit)
            OpenedFiles._installed = True
        _OPENED.append([])
        return _OPENED[-1]

    def __exit__(self, *exc_info: object) -> None:
        _OPENED.pop()


def never_read_opened(opened: list[str], repo: HubRepo) -> list[str]:
    """The files of ``repo`` that no loader may read, among ``opened``."""
    root = str(repo.snapshot) + "/"
    return sorted({path for path in opened if path.startswith(root) and is_never_read(path[len(root):])})
