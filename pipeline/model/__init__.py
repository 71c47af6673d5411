"""The model: loading checkpoints, the tiny model, frozen graphs, prompts, latents and the riffusion pipeline."""
