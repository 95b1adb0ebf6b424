"""bf16 against fp32 pretraining on the CPU: pairs/s and skipped optimiser steps, interleaved.

One process and one ``Pretrainer`` (``medssl pretrain``'s trainer, real data) per image size;
the precision is switched between short blocks of ``train_epoch`` steps, in the order
fp32, bf16, fp32, bf16, ... (``--repeats`` rounds), so a machine whose speed drifts (a shared
one) slows both alike and the ratio of neighbouring blocks stays meaningful. Each block
reports its pairs/s and the steps the finite-step guard skipped.

Where some convolution of the backbone sees a 1x1 map and writes a 1x1 map (ResNets with the
ImageNet stem at 32 px or less), the ``-unrouted`` variants run those convolutions as plain
``nn.Conv2d`` again (medssl before :mod:`medssl.models.single_pixel`), to show what the
routing changes in speed and in skipped steps.

    python bench/precision.py --root ../shared/data/ham10000 --sizes 16 24 32 48 64 \\
        --batch-size 64 --steps 20 --repeats 3 --threads 1 \\
        --out bench/results/precision-cpu-resnet18.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path


def _set_routing(model, on: bool) -> None:  # noqa: ANN001 - a torch module
    from torch import nn

    from medssl.models.single_pixel import SinglePixelConv2d

    for module in model.modules():
        if type(module) in (nn.Conv2d, SinglePixelConv2d):
            module.__class__ = SinglePixelConv2d if on else nn.Conv2d


def _routing_matters(model, image_size: int) -> bool:  # noqa: ANN001
    """Whether any convolution of ``model`` meets the single-pixel case at this size."""
    import torch

    from medssl.models.single_pixel import SinglePixelConv2d

    _set_routing(model, True)
    hits = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args: hits.append(m._single_tap(args[0])))
        for m in model.modules()
        if isinstance(m, SinglePixelConv2d)
    ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, 3, image_size, image_size))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return any(hit is not None for hit in hits)


def measure_size(args: argparse.Namespace, size: int) -> dict:
    from medssl.data.spec import DataSpec
    from medssl.train.pretrain import PretrainConfig, Pretrainer

    with tempfile.TemporaryDirectory() as out:
        config = PretrainConfig(
            data=DataSpec(args.dataset, str(Path(args.root).resolve())).to_dict(),
            out=str(Path(out) / "run"), method=args.method, backbone=args.backbone,
            small_stem=args.small_stem, image_size=size, batch_size=args.batch_size,
            device="cpu", precision="fp32", progress=False, cache_dir=args.cache_dir,
        )  # fmt: skip
        trainer = Pretrainer(config)
        variants = ["fp32", "bf16"]
        if _routing_matters(trainer.model, size):
            variants += ["fp32-unrouted", "bf16-unrouted"]
        epoch, blocks = 0, []
        for round_ in range(-1, args.repeats):  # round -1: warm-up, not reported
            for variant in variants:
                precision, _, unrouted = variant.partition("-")
                trainer.cfg.precision = precision
                _set_routing(trainer.model, not unrouted)
                steps = args.warmup if round_ < 0 else args.steps
                row = trainer.train_epoch(epoch, max_steps=steps)
                epoch += 1
                if round_ >= 0:
                    blocks.append({"variant": variant, "round": round_, "steps": steps,
                                   "pairs_per_s": row["pairs_per_s"],
                                   "skipped_steps": row["skipped_steps"]})  # fmt: skip
                    print(f"{size} px {variant:14s} round {round_}: "
                          f"{row['pairs_per_s']:7.1f} pairs/s, skipped {row['skipped_steps']}"
                          f" of {steps}", flush=True)  # fmt: skip
        trainer.run.close()
    summary = {}
    for variant in variants:
        mine = [b for b in blocks if b["variant"] == variant]
        summary[variant] = {
            "pairs_per_s_median": statistics.median(b["pairs_per_s"] for b in mine),
            "skipped_steps": sum(b["skipped_steps"] for b in mine),
            "steps": sum(b["steps"] for b in mine),
        }
    ratios = [  # bf16 / fp32 of the same round (neighbouring blocks)
        next(b for b in blocks if b["variant"] == "bf16" and b["round"] == r)["pairs_per_s"]
        / next(b for b in blocks if b["variant"] == "fp32" and b["round"] == r)["pairs_per_s"]
        for r in range(args.repeats)
    ]
    return {
        "image_size": size, "variants": variants, "blocks": blocks, "summary": summary,
        "bf16_over_fp32": ratios, "bf16_over_fp32_median": statistics.median(ratios),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ham10000")
    parser.add_argument("--root", default="../shared/data/ham10000")
    parser.add_argument("--method", choices=["simclr", "micle"], default="micle")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--small-stem", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=3, help="steps per variant first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all variants")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default torch's; 1 on a shared machine, where two "
        "threads that wait for each other at every operator measure the load)",
    )
    parser.add_argument("--out", help="JSON file for the figures")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for size in args.sizes:
        results.append(measure_size(args, size))
        r = results[-1]
        print(f"{size} px: bf16 / fp32 {r['bf16_over_fp32_median']:.2f} "
              f"({', '.join(f'{x:.2f}' for x in r['bf16_over_fp32'])}); "
              + "; ".join(f"{v} {s['pairs_per_s_median']:.1f} pairs/s, skipped "
                          f"{s['skipped_steps']}/{s['steps']}"
                          for v, s in r["summary"].items()), flush=True)  # fmt: skip
    if args.out:
        meta = {"config": vars(args), "machine": platform.machine(), "cpus": os.cpu_count(),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "load_average": os.getloadavg()}  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**meta, "sizes": results}, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
