"""Farm metrics through ray.util.metrics (exported to Prometheus / Grafana by Ray)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def farm_metrics():
    from ray.util.metrics import Counter, Gauge, Histogram

    return {
        "frames_done": Counter("disco_farm_frames_done", "Frames and images finished", tag_keys=("scene",)),
        "frames_failed": Counter("disco_farm_frames_failed", "Frame attempts that failed", tag_keys=("scene",)),
        "queue_depth": Gauge("disco_farm_queue_depth", "Frames waiting or running", tag_keys=("scene",)),
        "busy_seconds": Counter("disco_farm_actor_busy_seconds", "Seconds an actor spent rendering",
                                tag_keys=("actor",)),
        "step_seconds": Histogram("disco_farm_step_seconds", "Seconds per sampler step",
                                  boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16], tag_keys=("actor",)),
    }
