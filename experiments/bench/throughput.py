"""Training throughput end to end: a replication-style plain PyTorch loop against this project's pipeline.

    uv run experiments/bench/throughput.py                                  # CPU @32 px, with and without heads
    uv run experiments/bench/throughput.py --out docs/runs/bench_throughput_cpu_32px.json
    uv run experiments/bench/throughput.py --device cuda --image_size 224   # GPU @224 px: bf16, channels_last

In one process, the same network (same seed; MobileNetV1, or any timm model with ``--backbone``) is trained
``--steps`` steps after ``--warmup`` steps by

- ``plain``: the replication's loop: CIFAR-10 images as PIL images through torchvision's ``RandomCrop(32, 4)``,
  ``RandomHorizontalFlip``, (``Resize``,) ``ToTensor``, ``Normalize`` in a DataLoader with 2 workers, fp32;
- ``ours``: ``ImageClassifier`` + ``CIFAR10DataModule`` under a Lightning ``Trainer`` with the defaults
  (uint8 images in memory, the same augmentation drawn per image on the device, channels_last),
  bf16-mixed on a GPU;
- ``ours_heads`` (``--heads``): the same with the 14 auxiliary heads of the depth-pruning sweep attached
  and the backbone frozen, i.e. a sweep epoch;
- ``ours_compiled`` (``--compile``): ``ours`` with ``--model.compile true`` (compiled during its warm-up);
- ``ours_nchw`` (``--nchw``): ``ours`` with ``--model.channels_last false`` (what the default NHWC gains).

Each round runs them one after the other (plain, ours, ours_heads, plain, …), so a machine whose speed
drifts (other jobs) affects all alike; ratios are taken round by round and the medians reported. Every
figure is wall time per image from the end of the warm-up to the end of the last step (data fetch,
transfer, augmentation, forward, backward, optimiser), the same definition as ``train/img_per_s``.
The machine's peak is a dense matmul timed in each round; the fraction of peak counts a training step as
3 × 2 × the forward MACs of an image.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from experiments.run.arguments import OneLineArgumentParser, non_negative_int, positive_int
from experiments.run.checkpoint_io import write_json
from experiments.run.cli import exits_cleanly

DEFAULT_ROOT = "../shared/data/cifar10-jpg.tar.gz"
REPLICATION_HEAD = (64, 32)


def parse(args: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="CIFAR-10 folder or archive")
    parser.add_argument("--backbone", default="mobilenet_v1", help="mobilenet_v1 or a timm model name")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--image_size", type=positive_int, default=None, help="default: 32 on the CPU, 224 on a GPU")
    parser.add_argument("--batch_size", type=positive_int, default=128)
    parser.add_argument("--steps", type=positive_int, default=60, help="timed steps per run")
    parser.add_argument("--warmup", type=non_negative_int, default=5, help="untimed steps before them")
    parser.add_argument("--rounds", type=positive_int, default=2, help="interleaved rounds of all pipelines")
    parser.add_argument("--heads", default="both", choices=["off", "on", "both"],
                        help="time a sweep epoch (14 heads, frozen backbone) too ('both'), only ('on') or not")
    parser.add_argument("--compile", action="store_true",
                        help="time ours with --model.compile true too (compiled in its warm-up steps)")
    parser.add_argument("--nchw", action="store_true",
                        help="time ours with --model.channels_last false too (NCHW, the pre-NHWC default)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--train_subset", type=positive_int, default=None, help="training images used (all by default)")
    parser.add_argument("--matmul_size", type=int, default=None, help="side of the peak matmul")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    opts = parser.parse_args(args)
    resolve_device(parser, opts)
    opts.image_size = opts.image_size or (224 if opts.device == "cuda" else 32)
    opts.matmul_size = opts.matmul_size or (8192 if opts.device == "cuda" else 2048)
    for name in ("batch_size", "steps", "rounds", "image_size", "matmul_size"):
        if getattr(opts, name) <= 0:
            parser.error(f"--{name} must be positive")
    if opts.warmup < 1 or opts.workers < 0:
        parser.error("--warmup must be >= 1 (the clock starts when a warm-up step ends), --workers >= 0")
    return opts


def pipelines(heads: str, compiled: bool = False, nchw: bool = False) -> list[str]:
    """The runs of one round, in order."""
    names = {"off": ["plain", "ours"], "on": ["plain", "ours_heads"], "both": ["plain", "ours", "ours_heads"]}[heads]
    return [*names, *(["ours_compiled"] if compiled else []), *(["ours_nchw"] if nchw else [])]


def training_flops_per_image(macs: int) -> float:
    """FLOPs of one training step per image: forward + two backward products, 2 FLOPs per MAC."""
    return 3 * 2 * float(macs)


def fraction_of_peak(img_per_s: float, macs: int, peak_flops: float) -> float:
    return img_per_s * training_flops_per_image(macs) / peak_flops if peak_flops > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, size: int = 2048, seconds: float = 0.5) -> float:
    """FLOP/s of a dense ``size``² matmul (fp32 on the CPU, bf16 on a GPU), timed for about ``seconds``."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _sync(device)
    runs, start = 0, time.perf_counter()
    while True:
        a @ b
        runs += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2.0 * size**3 * runs / elapsed


class PlainCIFAR(torch.utils.data.Dataset):
    """``torchvision.datasets.CIFAR10``'s item path over decoded images: HWC uint8 → PIL → transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any) -> None:
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def plain_transform(image_size: int, mean: tuple, std: tuple) -> Any:
    """The replication's training transform (torchvision, PIL)."""
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    if image_size != 32:
        steps.append(transforms.Resize((image_size, image_size)))
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def run_plain(datamodule: Any, opts: argparse.Namespace, seed: int = 0) -> dict[str, float]:
    """The plain loop: end-to-end img/s over the timed steps."""
    from lightning_modules.backbones import build_net

    device = torch.device(opts.device)
    dataset = PlainCIFAR(datamodule.train_dataset.images, datamodule.train_dataset.labels,
                         plain_transform(opts.image_size, datamodule.mean, datamodule.std))
    loader = torch.utils.data.DataLoader(dataset, batch_size=opts.batch_size, shuffle=True, drop_last=True,
                                         num_workers=opts.workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    net = build_net({"backbone": opts.backbone, "num_classes": 10}).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    images, start, end = 0, 0.0, 0.0
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(net(x), y)
        loss.backward()
        optimizer.step()
        _sync(device)
        if step == opts.warmup - 1:
            start = time.perf_counter()
        if step >= opts.warmup:
            images += x.shape[0]
        if step == opts.warmup + opts.steps - 1:
            end = time.perf_counter()
            break
    return {"img_per_s": images / (end - start), "images": images, "seconds": end - start}


def run_ours(datamodule: Any, opts: argparse.Namespace, heads: bool, seed: int = 0,
             compiled: bool = False, channels_last: bool = True) -> dict[str, float]:
    """This project's pipeline under a Lightning Trainer; timed by the Throughput callback."""
    import lightning as L

    from callbacks.throughput import Throughput
    from lightning_modules.image_classifier import ImageClassifier

    gpu = opts.device == "cuda"
    torch.manual_seed(seed)
    model = ImageClassifier(backbone=opts.backbone, num_classes=10, compile=compiled, channels_last=channels_last)
    if heads:
        model.attach_aux_heads(REPLICATION_HEAD)
        model.freeze_modules(["net"])
    meter = Throughput(warmup=opts.warmup)
    trainer = L.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, precision="bf16-mixed" if gpu else "32-true",
                        max_steps=opts.warmup + opts.steps, limit_val_batches=0, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[meter])
    trainer.fit(model, datamodule)
    weight = next(p for p in model.net.parameters() if p.ndim == 4)
    return {"img_per_s": meter.images / meter.seconds if meter.seconds else 0.0, "images": meter.images,
            "nhwc": weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous(),
            "seconds": meter.seconds, "compute_img_per_s": meter.images / meter.compute_seconds
            if meter.compute_seconds else 0.0}


def make_datamodule(opts: argparse.Namespace) -> Any:
    from datamodules import CIFAR10DataModule

    datamodule = CIFAR10DataModule(root=opts.root, image_size=opts.image_size, batch_size=opts.batch_size,
                                   in_memory=True, train_subset=opts.train_subset, seed=0)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = len(datamodule.train_dataset) // opts.batch_size
    if opts.warmup + opts.steps > batches:
        raise SystemExit(f"error: --warmup + --steps ({opts.warmup} + {opts.steps}) exceed one epoch of "
                         f"{batches} batches of {opts.batch_size}; lower --steps or use more --train_subset")
    return datamodule


def summarise(runs: list[dict], peaks: list[float], macs: int, names: list[str]) -> dict[str, Any]:
    """Medians per pipeline, ratios taken round by round, fractions of the same round's peak."""
    rounds = sorted({r["round"] for r in runs})
    by = {(r["round"], r["pipeline"]): r for r in runs}
    out: dict[str, Any] = {"img_per_s": {n: statistics.median(by[(i, n)]["img_per_s"] for i in rounds)
                                         for n in names}}
    out["fraction_of_peak"] = {n: statistics.median(fraction_of_peak(by[(i, n)]["img_per_s"], macs, peaks[i])
                                                    for i in rounds) for n in names if n != "ours_heads"}
    for name in names[1:]:
        out[f"ratio_{name}_vs_plain"] = statistics.median(
            by[(i, name)]["img_per_s"] / by[(i, "plain")]["img_per_s"] for i in rounds)
    if {"ours", "ours_heads"} <= set(names):
        # extra wall time per image of a sweep epoch over a plain training epoch
        out["heads_overhead"] = statistics.median(
            by[(i, "ours")]["img_per_s"] / by[(i, "ours_heads")]["img_per_s"] - 1.0 for i in rounds)
    return out


def resolve_device(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """``--device auto`` → ``cuda`` when a GPU is present, else ``cpu``; ``cuda`` without one is an error."""
    if opts.device == "auto":
        opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")


@exits_cleanly
def main(args: list[str] | None = None) -> dict[str, Any]:
    opts = parse(args)
    command = shlex.join(["uv", "run", "experiments/bench/throughput.py", *(sys.argv[1:] if args is None else args)])
    if opts.threads:
        torch.set_num_threads(opts.threads)
    from lightning_modules.backbones import build_net
    from lightning_modules.deploy.profiling import model_cost

    device = torch.device(opts.device)
    datamodule = make_datamodule(opts)
    macs = int(model_cost(build_net({"backbone": opts.backbone, "num_classes": 10}), opts.image_size)["macs"])
    names = pipelines(opts.heads, opts.compile, opts.nchw)
    runs, peaks = [], []
    for i in range(opts.rounds):
        peaks.append(matmul_peak(device, opts.matmul_size))
        for name in names:
            result = run_plain(datamodule, opts) if name == "plain" else \
                run_ours(datamodule, opts, name == "ours_heads", compiled=name == "ours_compiled",
                         channels_last=name != "ours_nchw")
            runs.append({"round": i, "pipeline": name, **result})
            print(f"round {i} {name:>10}: {result['img_per_s']:8.1f} img/s", flush=True)
    summary = summarise(runs, peaks, macs, names)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "mode": f"{opts.device}-{opts.image_size}px", "backbone": opts.backbone,
        "image_size": opts.image_size, "batch_size": opts.batch_size, "steps": opts.steps,
        "warmup": opts.warmup, "rounds": opts.rounds, "workers_plain": opts.workers,
        "threads": torch.get_num_threads(), "precision_ours": "bf16-mixed" if device.type == "cuda" else "fp32",
        "macs_per_image": macs, "peak_flops": peaks, "peak_flops_median": statistics.median(peaks),
        "runs": runs, **summary,
        "command": command,
        "note": "pipelines run in turn within each round in one process (the machine may be shared with "
                "other work); ratios are per round, medians reported",
    }
    print_report(result)
    if opts.out is not None:
        write_json(opts.out, result)
        print(f"Wrote {opts.out}")
    return result


def print_report(r: dict[str, Any]) -> None:
    print(f"\n{r['backbone']}, {r['mode']}, batch {r['batch_size']}, {r['steps']} timed steps after {r['warmup']}, "
          f"{r['rounds']} interleaved round(s), {r['threads']} thread(s); {r['note']}")
    print(f"peak (dense matmul): {r['peak_flops_median'] / 1e9:.1f} GFLOP/s; "
          f"training step: {training_flops_per_image(r['macs_per_image']) / 1e6:.1f} MFLOP/image")
    for name, value in r["img_per_s"].items():
        frac = r["fraction_of_peak"].get(name)
        print(f"  {name:>10}: {value:8.1f} img/s" + (f"  ({100 * frac:.1f} % of peak)" if frac is not None else ""))
    for name in list(r["img_per_s"])[1:]:
        print(f"  {name} / plain: {r[f'ratio_{name}_vs_plain']:.2f}x")
    if "heads_overhead" in r:
        print(f"  sweep heads: +{100 * r['heads_overhead']:.1f} % time per image over a plain epoch")


if __name__ == "__main__":
    main()
