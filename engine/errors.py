"""Engine errors: one-line messages naming what was wrong and what to change."""

from __future__ import annotations


class EngineError(ValueError):
    """Base class of every user-facing engine error."""


class InvalidSpec(EngineError):
    """A RenderSpec value the engine cannot render (size, steps, weights, schedules...)."""


class UnknownModelName(EngineError):
    """A diffusion or CLIP model name that is neither catalogued nor a built-in tiny model."""


class ModelFileMissing(EngineError):
    """A model file that is not downloaded / not found (message from the catalogue)."""


class ModelMismatch(EngineError):
    """A spec asks for other models than the ones this Renderer holds."""


class MissingImagePrompt(EngineError):
    """An image prompt whose pixels were not passed to render()."""


class EngineOutOfMemory(EngineError):
    """The accelerator ran out of memory; the message names the settings to lower."""


class RenderCancelled(Exception):
    """should_stop() returned True: the render was abandoned between two sampler steps."""
