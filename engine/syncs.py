"""Host-device synchronisation inside a sampler step: what counts, and a guard.

On a GPU a value read back to the host (``.item()``, ``bool(t)``...) or host data copied
in (``torch.tensor(...)``, ``t[i] = 0.5``) stalls the stream. ``sync_check`` makes such
an operation raise inside a step: on CUDA through torch's sync debug mode, on the CPU by
watching the same operations through torch's python API (``HostAccessGuard``), so the
CPU test suite catches what would sync on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

HOST_READS = frozenset({
    "item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__",
    "__array__", "__format__", "__repr__",
})
"""Tensor methods that read a value back to the host (a sync on a GPU)."""
HOST_UPLOADS = frozenset({"tensor", "as_tensor"})
"""Functions that build a tensor from host data (a blocking upload when it goes to a GPU).
``torch.from_numpy`` makes a CPU tensor and bypasses torch function modes: its upload is
the ``.to(device)`` after it, which sync debug mode sees on CUDA."""


def host_access(func, args) -> str | None:
    """The kind of host access a torch call makes ("read", "upload"), or None.
    ``t[index] = value`` with a non-tensor value copies the value from the host."""
    name = getattr(func, "__name__", "")
    if name in HOST_READS:
        return "read"
    if name in HOST_UPLOADS:
        return "upload"
    if name == "__setitem__" and len(args) == 3 and not isinstance(args[2], torch.Tensor):
        return "upload"
    return None


class HostSyncInStep(RuntimeError):
    """A host read or upload inside a sampler step (``Renderer(check_syncs=True)``)."""


class HostAccessGuard(TorchFunctionMode):
    """Raises ``HostSyncInStep`` on a host read or upload made through torch's python API."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = host_access(func, args)
        if kind is not None:
            raise HostSyncInStep(f"host {kind} inside a sampler step: {getattr(func, '__name__', func)}")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def sync_check(enabled: bool, device: torch.device) -> Iterator[None]:
    """Within the block, a host-device sync raises (when enabled)."""
    if not enabled:
        yield
    elif device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    else:
        with HostAccessGuard():
            yield
