"""Loading from the Hugging Face Hub with one clear error when it cannot be reached, and torch dtype names.

Local folders are used directly; Hub names come from the local cache first, then from the Hub. When a Hub name is
neither cached nor downloadable, :class:`HubUnreachableError` says how to pass a local checkpoint instead of
waiting through huggingface_hub's download retries. Offline mode is huggingface_hub's own (``HF_HUB_OFFLINE``, or
``TRANSFORMERS_OFFLINE``); reachability is asked with huggingface_hub's HTTP session (its proxies and endpoint).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

__all__ = [
    "HubUnreachableError",
    "NoSuchPathError",
    "check_device",
    "check_local_path",
    "choose_dtype",
    "cpu_has_native_bf16",
    "hub_file",
    "hub_load",
    "hub_reachable",
    "looks_like_local_path",
    "offline_mode",
    "progress_bars",
    "resolve_dtype",
    "unreachable_error",
]

logger = logging.getLogger(__name__)
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_warned_slow_bf16 = False

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_TRUE = ("1", "true", "yes", "on")


class HubUnreachableError(OSError):
    """The Hugging Face Hub cannot be reached and the requested files are not cached."""

    cli_exit_code = 1  # the command line prints the message as one line (not a user error: exit status 1)


class NoSuchPathError(FileNotFoundError):
    """A name that is clearly a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``) does not exist."""

    cli_exit_code = 2


def looks_like_local_path(name: str | os.PathLike) -> bool:
    """True when ``name`` cannot be a Hub repo id (``name`` or ``owner/name``) and so must be a local path."""
    text = os.fspath(name)
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return True
    return os.path.splitext(text)[1].lower() in (".pth", ".pt", ".bin", ".safetensors", ".json", ".ckpt")


def check_local_path(name: str | os.PathLike, what: str = "model", flag: str = "--model") -> None:
    """Raise :class:`NoSuchPathError` when ``name`` is a local path (see :func:`looks_like_local_path`) that does
    not exist, instead of letting it be looked up on the Hub (whose error would blame the network)."""
    text = os.fspath(name)
    if looks_like_local_path(text) and not os.path.exists(os.path.expanduser(text)):
        raise NoSuchPathError(
            f"{flag} {text!r}: no such file or folder (the {what} is read from this local path; "
            f"a Hub name has the form 'name' or 'owner/name')"
        )


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``torch.bfloat16`` / ``"bf16"`` / ``"fp16"`` / ... -> a torch dtype; ``None`` and ``"auto"`` -> ``None``."""
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return None
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"torch_dtype must be a floating point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"unknown torch_dtype {dtype!r}; use one of {sorted(set(_DTYPES))}, a torch dtype or 'auto'")


def _proc_cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(cpu_flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (``avx512_bf16`` / ``amx_bf16``); ``cpu_flags`` default: /proc/cpuinfo."""
    flags = _proc_cpu_flags() if cpu_flags is None else set(cpu_flags)
    return any(flag in flags for flag in _NATIVE_BF16_FLAGS)


def choose_dtype(
    dtype: str | torch.dtype | None, device: str | torch.device, cpu_flags: Iterable[str] | None = None
) -> torch.dtype | None:
    """The pose model's dtype on ``device``: ``"auto"`` -> bf16 on CUDA and on CPUs with native bf16, else fp32.

    bf16 autocast / weights are slower than fp32 on CPUs without native bf16, hence fp32 there. The automatic
    choice is logged; an explicit bf16 on such a CPU warns once per process. ``None`` keeps the model's dtype.
    """
    global _warned_slow_bf16
    device_type = torch.device(device).type
    on_cpu = device_type == "cpu"
    if isinstance(dtype, str) and dtype == "auto":
        native = device_type == "cuda" or (on_cpu and cpu_has_native_bf16(cpu_flags))
        chosen = torch.bfloat16 if native else torch.float32
        why = "CUDA" if device_type == "cuda" else ("native bf16 CPU" if native else f"no native bf16 on {device_type}")
        logger.info("--dtype auto: %s (%s)", "bf16" if native else "fp32", why)
        return chosen
    chosen = resolve_dtype(dtype)
    if chosen == torch.bfloat16 and on_cpu and not cpu_has_native_bf16(cpu_flags) and not _warned_slow_bf16:
        _warned_slow_bf16 = True
        warnings.warn(
            "bf16 on a CPU without native bf16 (avx512_bf16 / amx_bf16) is usually slower than float32; "
            "use --dtype auto or float32",
            RuntimeWarning,
            stacklevel=2,
        )
    return chosen


def offline_mode() -> bool:
    """huggingface_hub's offline mode, also when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` were set after import
    (huggingface_hub reads them once, when it is imported)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return True
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint answers one HTTP request (False in offline mode), without retries.

    Any HTTP answer counts (even an error status): only connection errors and timeouts mean unreachable.
    """
    if offline_mode():
        return False
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except Exception:  # noqa: BLE001 - huggingface_hub's connection, timeout and offline-mode errors
        return False
    return True


def _no_connection(error: BaseException) -> bool:
    """True when huggingface_hub's LocalEntryNotFoundError (not cached, no connection) is behind ``error``."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _unreachable_message(name: str, what: str, flag: str) -> str:
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    folder = "dataset" if what == "dataset" else "checkpoint"
    if what == "dataset":
        local = (
            "A dataset folder is one written by `vitpose-hf convert-dataset` (or `save_to_disk`), or a folder of "
            f"parquet files; on a machine with network, get one with `hf download {name} --repo-type dataset "
            f"--local-dir ./{name.rsplit('/', 1)[-1]}`."
        )
    else:
        local = (
            "A checkpoint folder holds config.json and model.safetensors, as written by save_pretrained; on a machine "
            f"with network, get one with `hf download {name} --local-dir ./{name.rsplit('/', 1)[-1]}`."
        )
    return (
        f"cannot load the {what} {name!r}: the Hugging Face Hub ({endpoint}) cannot be reached (no network, or "
        f"offline mode is on) and {name!r} is not in the local cache. Pass a local {folder} folder instead: "
        f"`{flag} /path/to/{folder}` on the command line, or the folder path in Python. {local}"
    )


def unreachable_error(name: str | os.PathLike, what: str = "model", flag: str = "--model") -> HubUnreachableError:
    """The :class:`HubUnreachableError` for ``name`` (a ``what`` passed with ``flag`` on the command line)."""
    return HubUnreachableError(_unreachable_message(os.fspath(name), what, flag))


def hub_load(
    load: Callable[..., Any], name: str | os.PathLike, what: str = "model", flag: str = "--model", **kwargs: Any
) -> Any:
    """Call ``load(name, **kwargs)``: local folders directly; Hub names from the cache first, then the Hub.

    Raises :class:`HubUnreachableError` (naming the way to pass a local checkpoint, ``flag`` on the command line)
    when a Hub name is neither cached nor downloadable.
    """
    name = os.fspath(name)
    check_local_path(name, what, flag)
    if os.path.isdir(name) or kwargs.get("local_files_only"):
        return load(name, **kwargs)
    if os.path.isfile(name):
        raise ValueError(
            f"the {what} {name!r} is a file; pass a checkpoint folder (config.json + weights) or a Hub name"
        )
    try:
        return load(name, **{**kwargs, "local_files_only": True})
    except OSError:
        pass  # not cached: try the Hub
    if not hub_reachable():
        raise HubUnreachableError(_unreachable_message(name, what, flag))
    try:
        return load(name, **kwargs)
    except OSError as exc:
        if isinstance(exc, HubUnreachableError) or not _no_connection(exc):
            raise
        raise HubUnreachableError(_unreachable_message(name, what, flag)) from exc


def check_device(name: str | None, flag: str = "--device") -> None:
    """ValueError with the cause and the fix when ``name`` asks for CUDA or MPS that this torch cannot use."""
    if name is None or str(name) in ("auto", "cpu"):
        return
    text = str(name).lower()
    if text.startswith("cuda") or text.isdigit():
        if torch.version.cuda is None:
            raise ValueError(
                f"{flag} {name}: this torch build ({torch.__version__}) has no CUDA support; use {flag} cpu, or "
                "install a CUDA build of torch (https://pytorch.org/get-started/locally/)"
            )
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
        index = int(text.split(":", 1)[1]) if ":" in text else int(text) if text.isdigit() else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif text.startswith("mps"):
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{flag} {name}: MPS (Apple GPU) is not available in this torch build or machine")


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """With ``enabled=False``, silence the progress bars of transformers (weight loading) and huggingface_hub
    (downloads) for the duration, then restore their previous state."""
    if enabled:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    transformers_on = hf_logging.is_progress_bar_enabled()
    hub_off = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        if transformers_on:
            hf_logging.enable_progress_bar()
        if not hub_off:
            enable_progress_bars()


def hub_file(source: str, filename: str) -> str | None:
    """A file of a checkpoint folder, or of a Hub repo when cached or downloadable; None otherwise."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        return path if os.path.isfile(path) else None
    try:
        from huggingface_hub import try_to_load_from_cache
        from transformers.utils import cached_file

        cached = try_to_load_from_cache(source, filename)
        if isinstance(cached, str):
            return cached
        if cached is not None or not hub_reachable():  # cached "no such file", or no network
            return None
        return cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
    except Exception:  # noqa: BLE001 - an invalid repo id (e.g. a deleted temporary folder), a missing repo
        return None
