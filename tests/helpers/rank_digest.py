"""A callback for tests: each process of a fit writes what its network is, so that ranks can be compared.

``RankDigest(out_dir)`` writes ``<out_dir>/rank<global rank>.json`` at the end of ``fit`` with

* ``arch``: the network's constructor arguments (``pl_module.arch``) and ``shapes``: every state entry's shape;
* ``params_sha256``: SHA-256 of every parameter (trainable or frozen) after the last optimiser step;
* ``forward_state_sha256``: SHA-256 of the whole state (parameters and buffers) as the last training step
  saw it on entering the module. Under DDP that is right after the wrapper broadcast rank 0's buffers;
  at the end of ``fit`` the BatchNorm running statistics differ between ranks by design (each rank's last
  forward updates them from its own batch), so they are compared where DDP makes them equal;
* ``metrics``: ``trainer.callback_metrics`` (the sweep's ``val/aux_<k>/acc`` among them).

Add it on the command line: ``--trainer.callbacks+=tests.helpers.rank_digest.RankDigest --trainer.callbacks.out_dir D``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of ``tensors``, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class RankDigest(L.Callback):
    """Write ``rank<r>.json`` (architecture, weight hashes, metrics) of every process into ``out_dir``."""

    def __init__(self, out_dir: str = ".") -> None:
        self.out_dir = out_dir
        self.forward_state: str | None = None
        self.forward_step: int | None = None
        self._handle: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The LightningModule is never replaced (pruning swaps pl_module.net), so one hook lasts the fit.
        self._handle = pl_module.register_forward_pre_hook(self._record)

    def _record(self, module: L.LightningModule, args: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self.forward_state = tensors_sha256(module.state_dict())
            self.forward_step = module.global_step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handle is not None:
            self._handle.remove()
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "arch": pl_module.arch,
            "shapes": {k: list(v.shape) for k, v in pl_module.state_dict().items()},
            "params_sha256": tensors_sha256(dict(pl_module.named_parameters())),
            "forward_state_sha256": self.forward_state,
            "forward_step": self.forward_step,
            "global_step": trainer.global_step,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record, indent=1, sort_keys=True))
