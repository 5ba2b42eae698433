"""Per-frame camera motion values, resolved from keyframe schedules by the farm."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Motion:
    """Camera motion from the previous frame to this one (DD names and units).

    2D uses angle (degrees), zoom and translation_x/y (pixels); 3D uses translation_x/y/z
    (DD units, scaled 1/200 when projecting) and rotation_3d_x/y/z (degrees).
    """

    angle: float = 0.0
    zoom: float = 1.0
    translation_x: float = 0.0
    translation_y: float = 0.0
    translation_z: float = 0.0
    rotation_3d_x: float = 0.0
    rotation_3d_y: float = 0.0
    rotation_3d_z: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self == Motion()
