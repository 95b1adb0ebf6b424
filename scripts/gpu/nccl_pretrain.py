"""One pretraining process under torchrun with an NCCL group: medssl's distributed path on one GPU.

medssl's ``init_from_env`` starts a process group only when ``WORLD_SIZE`` > 1, so under
``torchrun --nproc_per_node 1`` medssl trains as a plain process. This script records that,
then makes the NCCL group itself, as a launch on several GPUs would, so that the distributed
path runs for real on the one GPU: SyncBatchNorm, DistributedDataParallel and NCCL
collectives (the loss all-reduce, barriers). It checks what it can and writes a JSON summary;
the exit status is 1 when a check fails.

    torchrun --standalone --nproc_per_node 1 scripts/gpu/nccl_pretrain.py \\
        --root ../shared/data/ham10000 --run-dir /tmp/nccl-run --json $OUT/2-nccl.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist


def start_group(backend: str) -> bool:
    """medssl's own start; then ``backend`` from torchrun's environment if it made none.

    Returns whether medssl started a group by itself.
    """
    from medssl.dist import init_from_env, is_distributed, local_rank

    started = init_from_env()
    if not is_distributed():
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        torch_dist.init_process_group(backend, init_method="env://")
    return started


def checks(trainer, metrics: dict, backend: str) -> dict[str, bool]:  # noqa: ANN001 - a Pretrainer
    from medssl.train.distributed import GlobalBatchNorm

    norms = [
        m for m in trainer.model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]  # fmt: skip
    # the paper's global batch norm: torch's SyncBatchNorm on a GPU, medssl's own on the CPU
    wanted = torch.nn.SyncBatchNorm if trainer.device.type == "cuda" else GlobalBatchNorm
    return {
        f"backend_is_{backend}": torch_dist.get_backend() == backend,
        "every_batchnorm_is_global": bool(norms) and all(isinstance(m, wanted) for m in norms),
        "wrapped_in_ddp": isinstance(trainer.ddp, torch.nn.parallel.DistributedDataParallel),
        "loss_is_finite": math.isfinite(metrics["loss"]),
        "no_skipped_steps": metrics.get("skipped_steps", 0) == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="HAM10000 folder")
    parser.add_argument("--run-dir", required=True, help="run directory (must not exist)")
    parser.add_argument("--json", required=True, help="summary file")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default="nccl", help="gloo: a dry run on a CPU")
    args = parser.parse_args()

    from medssl.data.spec import DataSpec
    from medssl.dist import cleanup, rank, world_size
    from medssl.train.pretrain import PretrainConfig, Pretrainer

    started_by_medssl = start_group(args.backend)
    config = PretrainConfig(
        data=DataSpec("ham10000", str(Path(args.root).resolve())).to_dict(), out=args.run_dir,
        method="micle", backbone=args.backbone, image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, warmup_epochs=0, device=args.device,
    )  # fmt: skip
    try:
        trainer = Pretrainer(config)
        metrics = trainer.fit()
        found = checks(trainer, metrics, args.backend)
        ranks, this_rank = world_size(), rank()
    finally:
        cleanup()
    summary = {
        "world_size_env": int(os.environ.get("WORLD_SIZE", "1")),
        "world_size": ranks,
        "medssl_started_the_group": started_by_medssl,
        "checks": found,
        "precision": trainer.cfg.precision,
        "metrics": {k: metrics.get(k) for k in ("loss", "pairs_per_s", "epoch_seconds")},
        "device": str(trainer.device),
    }
    if trainer.device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(trainer.device)
    if this_rank == 0:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary, indent=2))
    failed = [name for name, ok in found.items() if not ok]
    if failed:
        print(f"FAILED checks: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
