"""Riffusion's interpolated img2img, step by step: clip requests, prompt weighting, latents, step-wise batching."""
