"""The names a user picks a model by: the default checkpoint, the built-in tiny model, the scheduler choices.

Free of torch and diffusers so that command lines can offer them in ``--help`` without loading either.
"""

from __future__ import annotations

DEFAULT_CHECKPOINT = "riffusion/riffusion-model-v1"
TINY_CHECKPOINT = "tiny"

# Speed knob -> diffusers scheduler class. All are built from the checkpoint's own scheduler config.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "lcm": "LCMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
}
