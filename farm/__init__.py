"""Disco Farm: CLIP-guided diffusion art and animation as a Ray render farm."""

__version__ = "0.1.0"
