"""Moving host values to the device without waiting for it.

PyTorch's default copy from host to device is blocking: on CUDA it synchronises the stream, so the host waits for
every kernel queued before it. A non-blocking copy from host memory does not wait, and it is safe for a host
source, since CUDA has taken the bytes when the call returns. A copy from the device back to the host stays
blocking, because a non-blocking one could be read before it lands.
"""

from __future__ import annotations

import torch

__all__ = ["to_device"]


def to_device(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` (optionally cast to ``dtype`` first, where it is) on ``device``; from the host without waiting."""
    if dtype is not None:
        tensor = tensor.to(dtype)
    return tensor.to(device, non_blocking=tensor.device.type == "cpu")
