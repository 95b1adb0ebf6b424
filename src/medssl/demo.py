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

import textwrap
import time
from pathlib import Path
from typing import Any

from medssl.errors import MedsslError
from medssl.options import check_seed
from medssl.sweep import run_sweep

SYNTHETIC_BANNER = (
    "SYNTHETIC data: procedurally generated lesion-like images (4 shape classes, 1-4 images "
    "per case, 2 acquisition sites; the second site is the distribution-shift test). "
    "Not medical images: the figures say nothing about any clinical task."
)

WHY_NOTE = (
    "Why pretraining helps here: the class lives in the lesion's shape and texture, while "
    "skin tone, pigment colour, exposure, colour cast, pose and hairs vary from case to case "
    "and from image to image. A random network's features mostly see those nuisances; "
    "contrastive pretraining on the unlabelled images learns to ignore what the views (and, "
    "for MICLe, the other images of a case) change. MICLe continues from SimCLR, as in the "
    "paper, so it has had more pretraining steps. One pretraining and fine-tuning seed: the "
    "intervals are paired case-bootstrap intervals over the test cases, not over seeds (the "
    "three-seed check is in docs/RESULTS.md)."
)

#: Budgets of the synthetic demo. ``default`` is sized to finish in about 4 minutes on a
#: 2-core CPU (docs/RESULTS.md has the measured times and three seeds); ``smoke`` is for tests.
#: Pretraining runs at batch 64 rather than 128: twice the contrastive steps for about 10 s
#: more, and at 128 the outcome swung from seed to seed. Fine-tuning takes at least 40 steps,
#: so that 3% of the labels (34 images) is not fitted in 8 steps (docs/RESULTS.md measures
#: both choices).
#: Views keep at least 30 % of the 32 px image and are not blurred: smaller crops of so small
#: an image lose the lesion's outline, and blur erases the rings, streaks and dots that tell
#: the synthetic classes apart (measured: with the derm defaults 150 SimCLR steps did not
#: beat a random backbone).
_SYNTHETIC_BUDGETS: dict[str, dict[str, Any]] = {
    "default": {
        "cases": 1200, "image_size": 32, "simclr_epochs": 16, "micle_epochs": 6,
        "pretrain_batch": 64, "warmup": 1, "finetune_epochs": 8, "finetune_batch": 128,
        "finetune_min_steps": 40, "n_boot": 500, "fractions": [0.03, 1.0],
        "modes": ["linear", "finetune"],
    },
    "smoke": {
        "cases": 40, "image_size": 16, "simclr_epochs": 1, "micle_epochs": 1,
        "pretrain_batch": 16, "warmup": 0, "finetune_epochs": 1, "finetune_batch": 16,
        "n_boot": 20, "fractions": [0.1, 1.0], "modes": ["linear", "finetune"],
    },
}  # fmt: skip
#: Views of the synthetic demo's pretraining (see above).
SYNTHETIC_VIEWS = {"crop_scale_min": 0.3, "blur_p": 0.0}
#: Budgets on real data (``medssl demo --dataset D --root DIR``): the evidence protocol's
#: settings (protocols/ham10000-evidence-32px.yaml) with one seed; about an hour on a CPU.
_REAL_BUDGETS: dict[str, dict[str, Any]] = {
    "default": {
        "image_size": 32, "simclr_epochs": 15, "micle_epochs": 15, "pretrain_batch": 256,
        "warmup": 1, "finetune_epochs": 10, "finetune_batch": 128, "n_boot": 1000,
        "fractions": [0.01, 0.1, 1.0], "modes": ["finetune", "linear"],
    },
    "smoke": {
        "image_size": 16, "simclr_epochs": 1, "micle_epochs": 1, "pretrain_batch": 16,
        "warmup": 0, "finetune_epochs": 1, "finetune_batch": 16, "n_boot": 20,
        "fractions": [0.1, 1.0], "modes": ["finetune"],
    },
}  # fmt: skip
BUDGETS = sorted(_SYNTHETIC_BUDGETS)
INITS = ["random", "simclr", "micle"]


def demo_protocol(
    dataset: str | None = None, root: str | None = None, budget: str = "default", seed: int = 0
) -> dict[str, Any]:
    """The sweep protocol the demo runs (a plain dict, as a protocol YAML would hold).

    SimCLR first, then MICLe continuing from it (the paper's order); random, SimCLR and MICLe
    initialisations fine-tuned (and linearly probed) at a low and the full label fraction.
    """
    if root and not dataset:
        raise MedsslError("--root needs --dataset (the demo runs on synthetic data without)")
    synthetic = dataset in (None, "synthetic")
    table = _SYNTHETIC_BUDGETS if synthetic else _REAL_BUDGETS
    if budget not in table:
        raise MedsslError(f"--budget {budget!r} is not one of {', '.join(sorted(table))}")
    seed = check_seed(seed, "--seed")
    b = table[budget]
    common: dict[str, Any] = {
        "batch_size": b["pretrain_batch"], "warmup_epochs": b["warmup"], "seed": seed,
    }  # fmt: skip
    if synthetic:
        data: dict[str, Any] = {
            "dataset": "synthetic",
            "root": "",
            "options": {"synthetic_cases": b["cases"], "image_size": b["image_size"]},
        }
        common["augment"] = dict(SYNTHETIC_VIEWS)
        title = "medssl demo on SYNTHETIC data (not medical images)"
        notes = f"{SYNTHETIC_BANNER}\n\n{WHY_NOTE}"
    else:
        if not root:
            raise MedsslError(f"--root is required with --dataset {dataset}")
        data = {"dataset": dataset, "root": str(Path(root).expanduser().resolve())}
        title = f"medssl demo on {dataset}"
        notes = f"Real data: {dataset} at {data['root']}, canonical protocol."
    return {
        "data": data,
        "image_size": b["image_size"],
        "backbone": "resnet18",
        "pretrain": {
            "simclr": {"method": "simclr", "epochs": b["simclr_epochs"], **common},
            "micle": {"method": "micle", "epochs": b["micle_epochs"], "init": "simclr", **common},
        },
        "inits": list(INITS),
        "label_fractions": list(b["fractions"]),
        "seeds": [seed],
        "finetune": {
            "epochs": b["finetune_epochs"],
            "batch_size": b["finetune_batch"],
            "min_steps": b.get("finetune_min_steps", 0),
            "lr": 1e-3,
        },  # fmt: skip
        "finetune_modes": list(b["modes"]),
        "n_boot": b["n_boot"],
        "title": f"{title} ({budget} budget)",
        "notes": notes,
    }


def headline(out_dir: Path, fraction: float | None = None, metric: str | None = None) -> list[str]:
    """The demo's first lines: each initialisation's ``metric`` (default: the report's
    headline metric) at the label ``fraction`` (default: the lowest), per mode and split,
    with its paired difference to random and that interval in words. The same headline
    opens the report (:mod:`medssl.report.headline`)."""
    from medssl.report.headline import headline as sweep_headline
    from medssl.report.headline import headline_lines

    return headline_lines(
        sweep_headline(out_dir / "results.csv", out_dir / "paired.csv", metric, fraction)
    )


def run_demo(
    out_dir: str | Path = "medssl-demo",
    dataset: str | None = None,
    root: str | None = None,
    budget: str = "default",
    progress: bool = True,
    seed: int = 0,
) -> Path:
    """Run (or reuse) the demo in ``out_dir``; print the comparison table; return results.csv.

    ``budget`` is ``default`` or ``smoke`` (a few seconds per run, for tests). A folder
    holding a finished demo is reused: nothing is retrained, the table is printed again.
    """
    protocol = demo_protocol(dataset, root, budget, seed)
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
    kind = "SYNTHETIC data (not medical images)" if synthetic else protocol["data"]["dataset"]
    print(f"\n== medssl demo on {kind}: what pretraining buys ==")
    print("\n".join(headline(out)))
    if synthetic:
        print(textwrap.fill(WHY_NOTE, width=100))
    table = (out / "results.md").read_text(encoding="utf-8").split("\n## ")[0].rstrip()
    print(f"\nAll runs (seed {seed}, {budget} budget; paired differences and calibration are in ")
    print(f"{out / 'results.md'}):\n")
    print(table)
    print(f"\nreport: {out / 'report.html'} (demo took {time.perf_counter() - started:.0f} s)")
    return results
