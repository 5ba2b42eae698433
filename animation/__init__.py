"""Keyframes, camera motion, optical flow, colour and video files (pure image math, no Ray)."""
