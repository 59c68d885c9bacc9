"""Pretrained timm weights from local files only.

``timm.create_model(name, pretrained=True)`` fetches the weights from the Hugging Face hub, and offline it
retries for about a minute before a long traceback. The project downloads nothing: :func:`local_weights`
points timm at a file already on disk (the ``pretrained_cfg_overlay.file`` given, or the hub cache's copy)
and refuses at once, naming the cache folder to fill, when there is none.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["HUB_FILENAMES", "local_weights"]

#: The weight files timm reads from a hub repository, in its order of preference.
HUB_FILENAMES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def local_weights(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` for ``timm.create_model(name, ...)`` whose pretrained weights, if asked for, come from a
    local file; ``ValueError`` (one line: what is missing and where to put it) when there is none."""
    kwargs = dict(kwargs)
    if not kwargs.get("pretrained"):
        return kwargs
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    if overlay.get("state_dict") is not None:
        return kwargs
    if overlay.get("file"):
        if not Path(overlay["file"]).expanduser().is_file():
            raise ValueError(f"pretrained_cfg_overlay.file {overlay['file']} does not exist; give the path of a "
                             f"weights file of {name}")
        return kwargs
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models._registry import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, allow_unregistered=True)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if repo:
        repo_id, _, revision = repo.partition("@")
        for filename in HUB_FILENAMES:
            cached = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(cached, str):
                return {**kwargs, "pretrained_cfg_overlay": {**overlay, "file": cached}}
        where = f"{constants.HF_HUB_CACHE}/models--{repo_id.replace('/', '--')}"
        fill = f"fill {where} (e.g. `huggingface-cli download {repo_id}` where there is a network, HF_HOME for another cache)"
    else:
        fill = "timm names no hub repository for it"
    raise ValueError(f"pretrained weights of {name} were asked for, but none are on this machine and nothing is "
                     f"downloaded: {fill}, or pass a local file with "
                     f"--model.backbone_kwargs '{{\"pretrained\": true, \"pretrained_cfg_overlay\": {{\"file\": PATH}}}}'")
