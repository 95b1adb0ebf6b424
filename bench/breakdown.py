"""Where medssl's pretraining time goes: data pipeline alone, model step alone, both together.

One process, one ``Pretrainer`` (same data, model, batch and DataLoader as
``medssl pretrain``), three measurements of ``--steps`` steps each after ``--warmup``:

  loader    iterate the DataLoader only: pairs/s the augmentation workers deliver when they
            have the machine to themselves
  step      the trainer's own ``_step`` (forward, NT-Xent, backward, LARS) on one fixed
            batch: pairs/s of the model work with no data pipeline
  together  ``train_epoch`` end to end, with the main process's time spent waiting for the
            next batch, and the CPU seconds of the main process and of the workers (from
            /proc, Linux only)

If data and model work share the same cores (a CPU-only machine), the best rate both together
can reach is ``1 / (1/loader + 1/step)``: each pair costs its augmentation plus its model
step, and neither can hide behind the other. The script prints that bound beside the measured
rate, so the cause of a gap to the model-only ceiling is measured rather than guessed.

    python bench/breakdown.py --dataset ham10000 --root ../shared/data/ham10000 \\
        --backbone resnet18 --image-size 64 --batch-size 128 --num-workers 2 \\
        --out bench/results/breakdown-cpu-resnet18-64.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def _children_cpu_seconds() -> float:
    """user+system CPU seconds of this process's live child processes (DataLoader workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        children = (task / "children").read_text().split()
        for pid in children:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def measure(args: argparse.Namespace) -> dict:
    import torch

    from medssl.data.spec import DataSpec
    from medssl.train.pretrain import PretrainConfig, Pretrainer

    with tempfile.TemporaryDirectory() as out:
        config = PretrainConfig(
            data=DataSpec(args.dataset, str(Path(args.root).resolve())).to_dict(),
            out=str(Path(out) / "run"), method=args.method, backbone=args.backbone,
            image_size=args.image_size, epochs=1000, batch_size=args.batch_size,
            num_workers=args.num_workers, device=args.device, progress=False,
            augment_mode=args.augment_mode, precision=args.precision,
        )  # fmt: skip
        trainer = Pretrainer(config)
        pairs = args.steps * args.batch_size

        # together first: the workers start cold in every measurement the same way
        trainer.train_epoch(0, max_steps=args.warmup)
        cpu_main, cpu_workers = time.process_time(), _children_cpu_seconds()
        waited, start = 0.0, time.perf_counter()
        original = trainer.loader

        class TimedLoader:
            """Wraps the loader to add up the time the main process waits for batches."""

            def __iter__(self):  # noqa: ANN204
                nonlocal waited
                iterator = iter(original)
                while True:
                    t0 = time.perf_counter()
                    try:
                        batch = next(iterator)
                    except StopIteration:
                        return
                    waited += time.perf_counter() - t0
                    yield batch

            def __len__(self) -> int:
                return len(original)

        trainer.loader = TimedLoader()
        row = trainer.train_epoch(1, max_steps=args.steps)
        wall = time.perf_counter() - start
        together = {
            "pairs_per_s": row["pairs_per_s"],
            "wait_share": waited / wall,
            "main_cpu_s": time.process_time() - cpu_main,
            "worker_cpu_s": _children_cpu_seconds() - cpu_workers,
            "wall_s": wall,
        }
        trainer.loader = original

        # loader alone
        trainer.sampler.set_epoch(2)
        iterator = iter(trainer.loader)
        for _ in range(args.warmup):
            next(iterator)
        cpu_workers = _children_cpu_seconds()
        start = time.perf_counter()
        for _ in range(args.steps):
            view_a, _, _ = next(iterator)
        loader_wall = time.perf_counter() - start
        loader = {
            "pairs_per_s": pairs / loader_wall,
            "worker_cpu_ms_per_pair": 1000 * (_children_cpu_seconds() - cpu_workers) / pairs,
        }
        del iterator

        # model step alone, on a batch of real augmented views
        view_a, view_b, _ = next(iter(trainer.loader))
        for _ in range(args.warmup):
            trainer._step(view_a, view_b)
        cpu_main, start = time.process_time(), time.perf_counter()
        for _ in range(args.steps):
            trainer._step(view_a, view_b)
        step_wall = time.perf_counter() - start
        step = {
            "pairs_per_s": pairs / step_wall,
            "main_cpu_ms_per_pair": 1000 * (time.process_time() - cpu_main) / pairs,
        }

    bound = 1 / (1 / loader["pairs_per_s"] + 1 / step["pairs_per_s"])
    return {
        "config": vars(args), "machine": platform.machine(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "loader": loader, "step": step, "together": together,
        "shared_core_bound_pairs_per_s": bound,
        "together_over_step": together["pairs_per_s"] / step["pairs_per_s"],
        "bound_over_step": bound / step["pairs_per_s"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ham10000")
    parser.add_argument("--root", default="../shared/data/ham10000")
    parser.add_argument("--method", choices=["simclr", "micle"], default="simclr")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--augment-mode", default="auto", help="auto, per-sample or batch")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="JSON file for the figures")
    args = parser.parse_args()
    result = measure(args)
    t, lo, st = result["together"], result["loader"], result["step"]
    print(
        f"loader alone     {lo['pairs_per_s']:7.1f} pairs/s "
        f"({lo['worker_cpu_ms_per_pair']:.2f} worker CPU ms/pair)"
    )
    print(
        f"model step alone {st['pairs_per_s']:7.1f} pairs/s "
        f"({st['main_cpu_ms_per_pair']:.2f} main-process CPU ms/pair)"
    )
    print(
        f"end to end       {t['pairs_per_s']:7.1f} pairs/s; waiting for data "
        f"{100 * t['wait_share']:.0f}% of wall time; CPU s main {t['main_cpu_s']:.1f}, "
        f"workers {t['worker_cpu_s']:.1f}, wall {t['wall_s']:.1f}"
    )
    print(
        f"shared-core bound 1/(1/loader + 1/step) = "
        f"{result['shared_core_bound_pairs_per_s']:.1f} pairs/s; end to end / step "
        f"{result['together_over_step']:.2f}, bound / step {result['bound_over_step']:.2f}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
