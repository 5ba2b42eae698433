"""Prompt schedules: "text:weight" strings by frame, hard switches or cross-fades."""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass

from engine.spec import WeightedPrompt
from farm.settings import MAX_MAGNITUDE


class PromptError(ValueError):
    pass


MAX_PROMPT_LENGTH = 4000
"""Characters of one prompt (CLIP reads the first 77 tokens, about 300 characters; an image
prompt's path may be longer). plan.json repeats each frame's prompts."""
MAX_PROMPT_SET_LENGTH = 10_000
"""Characters of the prompts of one frame, together."""


_WEIGHT = re.compile(r"^(?P<text>.*):\s*(?P<weight>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$", re.S)


def parse_prompt(entry: str) -> WeightedPrompt:
    """'a lighthouse:3' -> ('a lighthouse', 3.0); the weight is the last ':number'."""
    if len(entry) > MAX_PROMPT_LENGTH:
        raise PromptError(f"prompt '{entry[:40]}...' is {len(entry)} characters long, beyond the limit of "
                          f"{MAX_PROMPT_LENGTH} (CLIP reads only the first 77 tokens, about 300 characters)")
    match = _WEIGHT.match(entry)
    if match:
        text, weight = match.group("text").strip(), float(match.group("weight"))
    else:
        text, weight = entry.strip(), 1.0
    if not text:
        raise PromptError(f"prompt '{entry}' has no text")
    if not math.isfinite(weight):
        raise PromptError(f"prompt '{entry}' has a weight that is not finite")
    if abs(weight) > MAX_MAGNITUDE:  # 1e308 + 1e308 overflows DD's sum and zeroes every weight
        raise PromptError(f"prompt '{entry}' has the weight {weight:g}, beyond the limit of ±{MAX_MAGNITUDE:.0f}")
    return WeightedPrompt(text, weight)


@dataclass(frozen=True)
class PromptSchedule:
    """Prompt sets keyed by their first frame; forward-filled, optionally cross-faded."""

    keys: tuple[tuple[int, tuple[WeightedPrompt, ...]], ...]
    crossfade: int = 0

    def _index_at(self, frame: int) -> int:
        starts = [start for start, _ in self.keys]
        return max(bisect.bisect_right(starts, frame) - 1, 0)

    def at(self, frame: int) -> tuple[WeightedPrompt, ...]:
        """The prompts in force at a frame (weights as written, or blended in a cross-fade)."""
        if not self.keys:
            return ()
        index = self._index_at(frame)
        start, prompts = self.keys[index]
        if self.crossfade <= 0 or index == 0 or frame < start or frame >= start + self.crossfade:
            return prompts
        mix = (frame - start + 1) / (self.crossfade + 1)
        previous = self.keys[index - 1][1]
        return _scaled(previous, 1.0 - mix) + _scaled(prompts, mix)


def _scaled(prompts: tuple[WeightedPrompt, ...], factor: float) -> tuple[WeightedPrompt, ...]:
    """Weights divided by the magnitude of their sum, as DD (engine.losses.normalised_weights)
    divides them: signs are kept, so a repelling prompt repels through the whole fade."""
    total = abs(sum(p.weight for p in prompts))
    norm = total if total > 1e-9 else 1.0
    return tuple(WeightedPrompt(p.text, p.weight / norm * factor) for p in prompts)


def parse_prompt_schedule(value: object, crossfade: int = 0) -> PromptSchedule:
    """{frame: [prompts]} (frames may be strings, as in DD's settings.txt), a list, or a string."""
    if value is None:
        return PromptSchedule((), crossfade)
    if isinstance(value, (str, list)):
        value = {0: value}
    if not isinstance(value, dict):
        raise PromptError(f"expected {{frame: [prompts]}} or a list of prompts, got {type(value).__name__}")
    keys = []
    for raw_frame, entries in value.items():
        try:
            frame = int(str(raw_frame).strip())
        except ValueError:
            raise PromptError(f"frame key '{raw_frame}' is not a frame number") from None
        if frame < 0:
            raise PromptError(f"frame key {frame} is negative")
        if any(frame == known for known, _ in keys):  # 0 and "0", or 5 and "05"
            raise PromptError(f"frame {frame} is given twice (as {raw_frame!r} and as another key)")
        if isinstance(entries, str):
            entries = [entries]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise PromptError(f"frame {frame}: expected a list of 'text:weight' strings")
        try:
            prompts = tuple(parse_prompt(e) for e in entries)
        except PromptError as exc:
            raise PromptError(f"frame {frame}: {exc}") from None
        if (length := sum(map(len, entries))) > MAX_PROMPT_SET_LENGTH:
            raise PromptError(f"frame {frame}: its {len(entries)} prompts hold {length} characters, "
                              f"beyond the limit of {MAX_PROMPT_SET_LENGTH} for one frame")
        keys.append((frame, prompts))  # a zero sum is the scene's to judge: text and image weights together
    keys.sort(key=lambda k: k[0])
    return PromptSchedule(tuple(keys), crossfade)
