"""Start-up checks of an experiment that need the built objects but no data: the output folder is
writable and the images are not smaller than the network's total stride."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_modules.backbones.timm import fixed_input_size
from lightning_modules.modes import eval_mode

__all__ = ["ExperimentError", "check_channels", "check_output_dir", "check_resolution", "total_stride"]


class ExperimentError(ValueError):
    """A setting of an experiment cannot work (found at start-up, before any data is read)."""


def check_output_dir(folder: Path) -> None:
    """Raise :class:`ExperimentError` unless files can be created in ``folder`` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ExperimentError(
            f"cannot write to the output folder {folder}: {err.strerror or err}; pass a writable "
            f"--trainer.default_root_dir (or --trainer.logger.init_args.save_dir)"
        ) from err


def total_stride(net: torch.nn.Module, in_chans: int = 3, probe: int = 256) -> int:
    """Input pixels per pixel of ``net.forward_features``'s output, from one forward pass in eval mode
    (works for any backbone, cut or not; nothing in the net changes).

    The pass runs on a copy of the network on the ``meta`` device (shapes only, no arithmetic: a real
    256-px pass of MobileNetV1 costs seconds of a small CPU's start-up); a network whose forward needs
    real values falls back to a real pass."""
    try:
        shadow = copy.deepcopy(net).to("meta").eval()
        with torch.no_grad():
            features = shadow.forward_features(torch.zeros(1, in_chans, probe, probe, device="meta"))
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel, or a data-dependent one
        with eval_mode(net), torch.no_grad():
            features = net.forward_features(torch.zeros(1, in_chans, probe, probe))
    return max(probe // int(features.shape[-1]), 1)


def check_channels(model: L.LightningModule, datamodule: Any) -> None:
    """The network takes as many input channels as the data's images have (before: a convolution's shape
    error after the first batch had been decoded)."""
    want, have = getattr(model, "hparams", {}).get("in_chans"), getattr(datamodule, "channels", None)
    if want is not None and have is not None and int(want) != int(have):
        raise ExperimentError(f"--model.in_chans {want}: {type(datamodule).__name__} gives {have}-channel images "
                              f"(files are decoded to RGB); use --model.in_chans {have}")


def check_resolution(model: L.LightningModule, datamodule: Any) -> None:
    """Raise :class:`ExperimentError` if the images are smaller than the network's total stride: the last
    feature maps would then be computed from padding alone."""
    net, size = getattr(model, "net", None), getattr(datamodule.hparams, "image_size", None)
    if net is None or size is None or not hasattr(net, "forward_features"):
        return
    in_chans = int(model.hparams.get("in_chans", 3))
    try:
        stride = total_stride(net, in_chans)
    except (AssertionError, RuntimeError, ValueError) as err:  # a network with a fixed input size (e.g. ViT)
        stride = stride_at_own_size(net, in_chans, int(size), err)
    if int(size) < stride:
        raise ExperimentError(
            f"--data.image_size {size} is smaller than the network's total stride ({stride} px): its last "
            f"layers would see padding only; use --data.image_size {stride} or more (or --model.stem_stride 1 "
            f"to halve the stride)"
        )


def stride_at_own_size(net: torch.nn.Module, in_chans: int, size: int, err: BaseException) -> int:
    """The stride probe at ``size`` for a network that refused the 256-px probe (a fixed input size, as
    timm's ViTs have); :class:`ExperimentError` with the reason when it refuses ``size`` too."""
    try:
        return total_stride(net, in_chans, probe=size)
    except (AssertionError, RuntimeError, ValueError) as again:
        own = fixed_input_size(net)
        fixed = (own, own) if own else (getattr(net, "pretrained_cfg", None) or {}).get("input_size")
        hint = (f"it takes {fixed[-2]}x{fixed[-1]} inputs only: use --data.image_size {fixed[-1]}, or build it for "
                f"{size} px (timm: --model.backbone_kwargs '{{\"img_size\": {size}}}')") if fixed else \
            "use a --data.image_size it accepts"
        first = str(again).splitlines()[0] if str(again) else type(again).__name__
        raise ExperimentError(f"the network does not run on --data.image_size {size} images ({first}); "
                              f"{hint}") from err
