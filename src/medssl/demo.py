"""``medssl demo``: the whole method end to end, as one generated sweep protocol.

Without a dataset the demo uses the embedded SYNTHETIC data (:mod:`medssl.data.synthetic`:
procedurally drawn lesion-like pictures, several per case, two acquisition sites), so it
runs anywhere without downloads: SimCLR and MICLe pretraining with the same budget, then
fine-tuning from random, SimCLR and MICLe initialisations at a low and the full label
fraction, each scored in-distribution (test) and on the held-out site (shift), then the
comparison table and report. With ``--dataset D --root DIR`` the same protocol runs on real
data (its canonical splits) with a bigger budget.

The demo is only a protocol handed to :func:`medssl.sweep.run_sweep`, so it resumes like
any sweep: running it again in the same folder reuses every finished run and evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from medssl.errors import MedsslError
from medssl.sweep import run_sweep

SYNTHETIC_BANNER = (
    "SYNTHETIC data: procedurally generated lesion-like images (4 shape classes, 1-4 images "
    "per case, 2 acquisition sites; the second site is the distribution-shift test). "
    "Not medical images: the figures say nothing about any clinical task."
)

BUDGET_NOTE = (
    "Budget: a few epochs of pretraining and fine-tuning and one seed, sized to run in minutes "
    "on a CPU. At this budget pretraining is far too short to help much, and differences of a "
    "few points between rows are within run-to-run noise; the demo shows the pipeline, not the "
    "paper's effect sizes."
)

#: Budgets of the synthetic demo. ``default`` is sized to finish in under 10 minutes on a
#: 2-core CPU: ``medssl demo`` measured 1 min 53 s end to end on the project's idle 2-core VM
#: (torch 2.14.1, 2026-11-23) and 6 min 17 s (with finetune batch 32) while other training jobs
#: shared the two cores. ``smoke`` is for tests (a few seconds per run).
_SYNTHETIC_BUDGETS: dict[str, dict[str, Any]] = {
    "default": {
        "cases": 240, "image_size": 32, "pretrain_epochs": 5, "pretrain_batch": 64,
        "warmup": 1, "finetune_epochs": 5, "finetune_batch": 16, "n_boot": 200,
    },
    "smoke": {
        "cases": 40, "image_size": 16, "pretrain_epochs": 1, "pretrain_batch": 16,
        "warmup": 0, "finetune_epochs": 1, "finetune_batch": 16, "n_boot": 20,
    },
}  # fmt: skip
#: Budgets on real data (``medssl demo --dataset D --root DIR``): hours on a CPU.
_REAL_BUDGETS: dict[str, dict[str, Any]] = {
    "default": {
        "image_size": 64, "pretrain_epochs": 20, "pretrain_batch": 256, "warmup": 2,
        "finetune_epochs": 15, "finetune_batch": 128, "n_boot": 1000,
    },
    "smoke": {
        "image_size": 16, "pretrain_epochs": 1, "pretrain_batch": 16, "warmup": 0,
        "finetune_epochs": 1, "finetune_batch": 16, "n_boot": 20,
    },
}  # fmt: skip
BUDGETS = sorted(_SYNTHETIC_BUDGETS)
LABEL_FRACTIONS = [0.1, 1.0]


def demo_protocol(
    dataset: str | None = None, root: str | None = None, budget: str = "default"
) -> dict[str, Any]:
    """The sweep protocol the demo runs (a plain dict, as a protocol YAML would hold)."""
    synthetic = dataset in (None, "synthetic")
    table = _SYNTHETIC_BUDGETS if synthetic else _REAL_BUDGETS
    if budget not in table:
        raise MedsslError(f"--budget {budget!r} is not one of {', '.join(sorted(table))}")
    b = table[budget]
    if synthetic:
        data: dict[str, Any] = {
            "dataset": "synthetic",
            "root": "",
            "options": {"synthetic_cases": b["cases"], "image_size": b["image_size"]},
        }
        title = "medssl demo on SYNTHETIC data (not medical images)"
        notes = f"{SYNTHETIC_BANNER}\n\n{BUDGET_NOTE}"
    else:
        if not root:
            raise MedsslError(f"--root is required with --dataset {dataset}")
        data = {"dataset": dataset, "root": str(Path(root).expanduser().resolve())}
        title = f"medssl demo on {dataset}"
        notes = f"Real data: {dataset} at {data['root']}, canonical protocol."
    pretrain = {
        "epochs": b["pretrain_epochs"], "batch_size": b["pretrain_batch"],
        "warmup_epochs": b["warmup"],
    }  # fmt: skip
    return {
        "data": data,
        "image_size": b["image_size"],
        "backbone": "resnet18",
        "pretrain": {
            "simclr": {"method": "simclr", **pretrain},
            "micle": {"method": "micle", **pretrain},
        },
        "inits": ["random", "simclr", "micle"],
        "label_fractions": list(LABEL_FRACTIONS),
        "seeds": [0],
        "finetune": {
            "epochs": b["finetune_epochs"],
            "batch_size": b["finetune_batch"],
            "lr": 1e-3,
        },  # fmt: skip
        "n_boot": b["n_boot"],
        "title": f"{title} ({budget} budget)",
        "notes": notes,
    }


def run_demo(
    out_dir: str | Path = "medssl-demo",
    dataset: str | None = None,
    root: str | None = None,
    budget: str = "default",
    progress: bool = True,
) -> Path:
    """Run (or reuse) the demo in ``out_dir``; print the comparison table; return results.csv.

    ``budget`` is ``default`` or ``smoke`` (a few seconds per run, for tests). A folder
    holding a finished demo is reused: nothing is retrained, the table is printed again.
    """
    protocol = demo_protocol(dataset, root, budget)
    out = Path(out_dir).expanduser().resolve()
    synthetic = protocol["data"]["dataset"] == "synthetic"
    print(f"medssl demo ({budget} budget) -> {out}", flush=True)
    if synthetic:
        print(SYNTHETIC_BANNER, flush=True)
    if (out / "results.csv").is_file():
        print(
            f"{out} holds a finished demo: its runs and evaluations are reused, nothing is "
            "retrained (delete the folder or pass another --out to start afresh)",
            flush=True,
        )
    elif (out / "protocol.yaml").is_file():
        print(f"{out} holds an unfinished demo: resuming it", flush=True)
    started = time.perf_counter()
    results = run_sweep(protocol, out, progress=progress)
    table = (out / "results.md").read_text(encoding="utf-8")
    kind = "SYNTHETIC data (not medical images)" if synthetic else protocol["data"]["dataset"]
    print(f"\nResults on {kind}, one fine-tuning seed, {budget} budget:\n")
    print(table)
    if synthetic:
        print(BUDGET_NOTE)
    print(f"report: {out / 'report.html'} (demo took {time.perf_counter() - started:.0f} s)")
    return results
