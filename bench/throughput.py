"""Training throughput, side by side: the model-only ceiling, medssl, and lightly's recipe.

Each variant runs in its own subprocess (clean peak memory, no shared caches) with the same
backbone, image size, global batch, precision and data. With no extra flags medssl runs with
its defaults (``--augment-mode auto``, ``--precision auto``, automatic DataLoader workers),
so the table shows what a user gets:

  ceiling      forward + backward + optimiser step on tensors already on the device
  medssl-simclr / medssl-micle
               ``medssl pretrain``'s trainer end to end: decoded-image cache, sampler,
               augmentation (medssl's default mode), NT-Xent, LARS
  medssl-micle-per-sample
               the same with per-sample views in DataLoader workers (the pre-0.2 default)
  lightly      lightly's SimCLR recipe: LightlyDataset over the image files,
               SimCLRTransform, a torchvision ResNet with lightly's projection head,
               NTXentLoss, SGD, a standard DataLoader with one worker per core, the same
               autocast precision as medssl (install: pip install 'medssl[bench]')
  ceiling-finetune / medssl-finetune / medssl-finetune-per-sample
               supervised fine-tuning (images/s): the classifier's forward + backward + AdamW
               step on fixed tensors, and ``medssl finetune``'s trainer in both modes
  ceiling-compile / medssl-simclr-compile
               the ceiling and medssl's SimCLR with the model under ``torch.compile``
               (``--compile`` compiles them in the other variants too, except lightly and
               ``medssl finetune``, which have no such option); only when asked for

Prints pairs/s (images/s for fine-tuning), the ratios to the ceiling and to lightly and peak
memory; writes JSON.

    python bench/throughput.py --dataset ham10000 --root ../shared/data/ham10000 \\
        --backbone resnet18 --image-size 64 --batch-size 128 --out bench/results/cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_VARIANTS = (
    "ceiling", "medssl-simclr", "medssl-micle", "medssl-micle-per-sample", "lightly",
    "ceiling-finetune", "medssl-finetune", "medssl-finetune-per-sample",
)  # fmt: skip
#: compiling takes about a minute per variant, so these run only when named in --variants
COMPILE_VARIANTS = ("ceiling-compile", "medssl-simclr-compile")
VARIANTS = DEFAULT_VARIANTS + COMPILE_VARIANTS
#: variant -> the reference its speed is divided by
REFERENCES = {
    "ceiling-compile": ("ceiling",),
    "medssl-simclr-compile": ("ceiling-compile", "medssl-simclr", "lightly"),
    "medssl-simclr": ("ceiling", "lightly"),
    "medssl-micle": ("ceiling", "lightly"),
    "medssl-micle-per-sample": ("ceiling", "lightly"),
    "medssl-finetune": ("ceiling-finetune",),
    "medssl-finetune-per-sample": ("ceiling-finetune",),
}


def precision_for(args: argparse.Namespace, device) -> str:  # noqa: ANN001
    """medssl's resolved precision: the ceiling and lightly run at the same one."""
    from medssl.train.common import resolve_precision

    return resolve_precision(args.precision, device, args.image_size)


def peak_memory_mb(device) -> float:  # noqa: ANN001
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_info(device) -> dict:  # noqa: ANN001
    """The GPU's name and the CUDA and cuDNN versions, for the report's machine block."""
    import torch

    if device.type != "cuda":
        return {}
    return {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}  # fmt: skip


def sync(device) -> None:  # noqa: ANN001
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ceiling(args: argparse.Namespace) -> dict:
    import torch

    from medssl.losses import NTXentLoss
    from medssl.models.backbones import build_backbone
    from medssl.models.heads import SimCLRModel
    from medssl.train.common import autocast, resolve_device
    from medssl.train.optim import build_optimizer

    device = resolve_device(args.device)
    precision = precision_for(args, device)
    torch.manual_seed(0)
    backbone, dim = build_backbone(
        args.backbone, image_size=args.image_size, patch_size=args.patch_size
    )
    model = SimCLRModel(backbone, dim).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer("lars", model, 0.3, 1e-6)
    criterion = NTXentLoss(0.1)
    forward = torch.compile(model) if args.compile else model
    x = torch.randn(2 * args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast(device, precision):
            z = forward(x)
        loss = criterion(*z.float().chunk(2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    return {"pairs_per_s": args.steps * args.batch_size / seconds, "device": str(device),
            "precision": precision, "compile": args.compile,
            "peak_memory_mb": peak_memory_mb(device)}  # fmt: skip


def run_ceiling_finetune(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from medssl.models.backbones import build_backbone
    from medssl.models.heads import Classifier
    from medssl.train.common import autocast, resolve_device
    from medssl.train.optim import build_optimizer

    device = resolve_device(args.device)
    precision = precision_for(args, device)
    torch.manual_seed(0)
    backbone, dim = build_backbone(
        args.backbone, image_size=args.image_size, patch_size=args.patch_size
    )
    model = Classifier(backbone, dim, 7).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer("adamw", model, 1e-3, 1e-4)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (args.batch_size,), device=device)
    forward = torch.compile(model) if args.compile else model

    def step() -> None:
        with autocast(device, precision):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": args.steps * args.batch_size / seconds, "device": str(device),
            "precision": precision, "peak_memory_mb": peak_memory_mb(device)}  # fmt: skip


def run_medssl_finetune(args: argparse.Namespace, augment_mode: str) -> dict:
    """Fine-tuning's train_epoch (no validation) on 100% labels, timed after a warm-up."""
    from medssl.data.spec import DataSpec
    from medssl.train.finetune import FinetuneConfig, Finetuner

    with tempfile.TemporaryDirectory() as out:
        config = FinetuneConfig(
            data=DataSpec(args.dataset, str(Path(args.root).resolve())).to_dict(),
            out=str(Path(out) / "run"), backbone=args.backbone, image_size=args.image_size,
            patch_size=args.patch_size, epochs=1000, batch_size=args.batch_size,
            augment_mode=augment_mode,
            precision=args.precision, num_workers=args.num_workers, device=args.device,
            progress=False,
        )  # fmt: skip
        trainer = Finetuner(config)
        trainer.train_epoch(0)  # warm-up (one epoch: the loader cannot stop early)
        row = trainer.train_epoch(1)
        cfg = trainer.cfg
        return {"images_per_s": row["images_per_s"], "device": str(trainer.device),
                "precision": cfg.precision, "augment_mode": cfg.augment_mode,
                "num_workers": cfg.num_workers,
                "peak_memory_mb": peak_memory_mb(trainer.device)}  # fmt: skip


def run_medssl(args: argparse.Namespace, method: str, augment_mode: str) -> dict:
    from medssl.data.spec import DataSpec
    from medssl.train.pretrain import PretrainConfig, Pretrainer

    with tempfile.TemporaryDirectory() as out:
        config = PretrainConfig(
            data=DataSpec(args.dataset, str(Path(args.root).resolve())).to_dict(),
            out=str(Path(out) / "run"), method=method, backbone=args.backbone,
            patch_size=args.patch_size, image_size=args.image_size, epochs=1000,
            batch_size=args.batch_size,
            num_workers=args.num_workers, augment_mode=augment_mode, device=args.device,
            precision=args.precision, progress=False, compile=args.compile,
        )  # fmt: skip
        trainer = Pretrainer(config)
        if args.warmup:  # an epoch of no steps has no loss to report
            trainer.train_epoch(0, max_steps=args.warmup)
        row = trainer.train_epoch(1, max_steps=args.steps)
        cfg = trainer.cfg
        return {"pairs_per_s": row["pairs_per_s"], "device": str(trainer.device),
                "precision": cfg.precision, "augment_mode": cfg.augment_mode,
                "num_workers": cfg.num_workers, "compile": cfg.compile,
                "peak_memory_mb": peak_memory_mb(trainer.device),
                "distinct_pair_share": row["distinct_pair_share"]}  # fmt: skip


def run_lightly(args: argparse.Namespace) -> dict:
    import torch
    import torchvision
    from lightly.data import LightlyDataset
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    from medssl.train.common import autocast, resolve_device

    device = resolve_device(args.device)
    precision = precision_for(args, device)
    workers = args.num_workers if args.num_workers is not None else os.cpu_count() or 1
    torch.manual_seed(0)
    resnet = getattr(torchvision.models, args.backbone)()
    dim = resnet.fc.in_features
    resnet.fc = torch.nn.Identity()
    model = torch.nn.Sequential(resnet, SimCLRProjectionHead(dim, dim, 128))
    model = model.to(device).to(memory_format=torch.channels_last)
    transform = SimCLRTransform(input_size=args.image_size)
    dataset = LightlyDataset(input_dir=str(Path(args.root).resolve()), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )  # fmt: skip
    criterion = NTXentLoss(temperature=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)

    def epoch(max_steps: int) -> float:
        seen, start = 0, time.perf_counter()
        for step, ((x0, x1), _, _) in enumerate(loader):
            if step >= max_steps:
                break
            x = torch.cat([x0, x1]).to(device, non_blocking=True)
            with autocast(device, precision):
                z = model(x.contiguous(memory_format=torch.channels_last))
            loss = criterion(*z.float().chunk(2))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(x0)
        sync(device)
        return seen / (time.perf_counter() - start)

    epoch(args.warmup)
    return {"pairs_per_s": epoch(args.steps), "device": str(device), "precision": precision,
            "num_workers": workers, "peak_memory_mb": peak_memory_mb(device),
            "images": len(dataset)}  # fmt: skip


def child(args: argparse.Namespace) -> None:
    if args.variant.endswith("-compile"):
        args.compile = True
    variant = args.variant.removesuffix("-compile")
    mode = "per-sample" if variant.endswith("-per-sample") else args.augment_mode
    name = variant.removesuffix("-per-sample")
    if name == "ceiling":
        result = run_ceiling(args)
    elif name == "ceiling-finetune":
        result = run_ceiling_finetune(args)
    elif name == "medssl-finetune":
        result = run_medssl_finetune(args, mode)
    elif name.startswith("medssl-"):
        result = run_medssl(args, name.removeprefix("medssl-"), mode)
    else:
        result = run_lightly(args)
    import torch

    result.update(gpu_info(torch.device(result["device"])))
    print("RESULT " + json.dumps(result), flush=True)


def speed(result: dict) -> float | None:
    return result.get("pairs_per_s") or result.get("images_per_s")


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    """One variant in its own process: its RESULT line, or its error and the end of its stderr."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-20:] or ["no output"]
        print(f"{variant:<27} failed: {tail[-1]}", flush=True)
        return {"error": tail[-1], "stderr_tail": tail}
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["wall_s"] = time.perf_counter() - started
    unit = "pairs/s" if "pairs_per_s" in result else "img/s  "
    keys = ("precision", "augment_mode", "num_workers", "compile")
    extra = ", ".join(f"{k} {result[k]}" for k in keys if k in result and result[k] is not False)
    print(f"{variant:<27} {speed(result):8.1f} {unit}  peak {result['peak_memory_mb']:6.0f} MB  "
          f"{extra}", flush=True)  # fmt: skip
    return result


def ratios_of(results: dict[str, dict]) -> dict[str, float]:
    ratios = {}
    for variant, refs in REFERENCES.items():
        for ref in refs:
            ours, theirs = speed(results.get(variant, {})), speed(results.get(ref, {}))
            if ours and theirs:
                ratios[f"{variant}/{ref}"] = ours / theirs
    return ratios


def machine_info(results: dict[str, dict]) -> dict:
    """This machine, without importing torch here: the variants own the GPU (a CUDA
    context in this process would take memory from them); they report its name."""
    from importlib.metadata import PackageNotFoundError, version

    info = {"platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version()}  # fmt: skip
    with contextlib.suppress(PackageNotFoundError):
        info["torch"] = version("torch")
    for key in ("gpu", "cuda", "cudnn"):
        found = {r[key] for r in results.values() if r.get(key)}
        if found:
            info[key] = found.pop() if len(found) == 1 else sorted(found)
    return info


def write_report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    report = {
        "settings": {k: getattr(args, k) for k in (
            "dataset", "backbone", "image_size", "patch_size", "batch_size", "steps", "warmup",
            "num_workers", "augment_mode", "precision", "device", "compile")},
        "machine": machine_info(results),
        "results": results,
        "ratios": ratios_of(results),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def parent(args: argparse.Namespace) -> None:
    results: dict[str, dict] = {}
    for variant in args.variants:
        results[variant] = run_variant(args, variant)
        if args.out:  # after every variant: a run stopped part-way keeps what it measured
            write_report(args, results)
    for name, ratio in ratios_of(results).items():
        print(f"{name.replace('/', ' / ')}: {ratio:.2f}")
    if args.out:
        print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ham10000")
    parser.add_argument("--root", default="../shared/data/ham10000")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=0,
                        help="a timm transformer's patch (0: its own); lightly's recipe is "
                        "ResNet-only, leave it out of --variants for timm:<name>")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=None,
                        help="default: medssl's automatic choice; lightly: one per core")
    parser.add_argument("--augment-mode", choices=["auto", "per-sample", "batch"],
                        default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                        default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model of the ceilings and of medssl's pretraining "
                        "(see *-compile; fine-tuning and lightly run eagerly)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS),
                        help=f"default: all but {', '.join(COMPILE_VARIANTS)}")
    parser.add_argument("--out", help="JSON file for the figures")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    child(args) if args.variant else parent(args)


if __name__ == "__main__":
    main()
