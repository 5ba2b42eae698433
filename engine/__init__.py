"""The CLIP-guided diffusion renderer: models and sampler (pure torch; no Ray, no files)."""
