"""Pack what a sweep has finished into a small archive that can cross device calls.

A ResNet-50 sweep folder holds gigabytes of weights (a 220 MB pretraining checkpoint per
epoch written, ~100 MB per fine-tuned model), far over what the device tool brings back
(16 MiB a file, 64 MiB a call) or carries to the next call (64 MiB with the data). What a
sweep needs to go on from a finished seed is small: each run's config.yaml, metrics.json and
log, and each fine-tune's eval_*.json and predictions_*.npz (results.csv, paired.csv and the
report are rebuilt from those). So the archive holds, for every pretraining seed whose runs
and evaluations are all complete, those files and no weights; a seed still under way is left
out whole (its fine-tunes would need the weights of its pretraining runs) and is redone by
the next call. The sweep folder itself is not touched: on a machine still warm, the next call
goes on from it, weights and checkpoints included.

Before packing it rebuilds results.csv, paired.csv and the report from the evaluations done
so far (a sweep stopped by the call's deadline has not written them).

    python scripts/gpu/sweep_state.py PROTOCOL SWEEP_DIR OUT.tar.gz
    tar -xzf OUT.tar.gz -C "$(dirname SWEEP_DIR)"     # next call, on a fresh machine
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

#: weights and checkpoints: what the next call must not need from a finished seed
HEAVY_SUFFIXES = (".pt", ".safetensors")
SKIPPED_NAMES = (".lock",)


def eval_labels(protocol) -> list[str]:  # noqa: ANN001 - medssl.sweep.Protocol
    """The ``eval_<label>.json`` labels every fine-tune of the protocol must have."""
    from medssl.report import split_file_label

    splits = protocol.splits or ["test", "shift"]
    return [*splits, *(split_file_label(e.split) for e in protocol.external)]


def job_done(job, labels: list[str]) -> bool:  # noqa: ANN001 - medssl.sweep._Job
    from medssl.train.run import is_complete

    if not is_complete(job.run):
        return False
    return job.kind != "finetune" or all((job.run / f"eval_{x}.json").is_file() for x in labels)


def finished_seeds(protocol, sweep: Path) -> tuple[list[int], list[int], dict]:  # noqa: ANN001
    """(seeds whose every run and evaluation is done, the other seeds, runs by seed)."""
    from medssl.sweep import plan

    labels = eval_labels(protocol)
    by_seed: dict[int, list] = defaultdict(list)
    for job in plan(protocol, sweep, progress=False):
        by_seed[job.seed].append(job)
    done = sorted(s for s, jobs in by_seed.items() if all(job_done(j, labels) for j in jobs))
    return done, sorted(set(by_seed) - set(done)), by_seed


def rebuild_results(protocol, sweep: Path) -> None:  # noqa: ANN001
    """results.csv, paired.csv and the report from the evaluations done so far."""
    from medssl.paired import write_paired
    from medssl.report import write_report
    from medssl.sweep import collect_results

    results = collect_results(protocol, sweep, protocol.splits or ["test", "shift"])
    paired = write_paired(results, sweep, n_boot=protocol.n_boot)
    title = protocol.title or f"medssl sweep: {protocol.data['dataset']}"
    write_report(results, sweep, title, "Snapshot of a sweep run across device calls.", paired)


def light_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` except weights, checkpoints and lock files."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix not in HEAVY_SUFFIXES and p.name not in SKIPPED_NAMES
    )  # fmt: skip


def pack(sweep: Path, runs: list[Path], archive: Path) -> int:
    """Write the sweep's top-level files and the light files of ``runs``; return the count."""
    files = [p for p in sweep.iterdir() if p.is_file()]
    for run in runs:
        files += light_files(run)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(sweep.parent)))
    return len(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", help="the sweep's protocol YAML")
    parser.add_argument("sweep", help="the sweep folder")
    parser.add_argument("archive", help="the .tar.gz to write")
    args = parser.parse_args()

    from medssl.sweep import load_protocol

    protocol = load_protocol(args.protocol)
    sweep = Path(args.sweep).resolve()
    if not sweep.is_dir():
        print(f"no sweep folder {sweep}: nothing to pack", file=sys.stderr)
        return 1
    try:
        rebuild_results(protocol, sweep)
    except Exception as exc:  # noqa: BLE001 - the archive matters more than the report
        print(f"results not rebuilt ({type(exc).__name__}: {exc})", file=sys.stderr)
    done, pending, by_seed = finished_seeds(protocol, sweep)
    runs = [job.run for seed in done for job in by_seed[seed] if job.run.is_dir()]
    count = pack(sweep, runs, Path(args.archive))
    size = Path(args.archive).stat().st_size / 2**20
    print(f"packed {count} files of seeds {done or 'none'} ({len(runs)} runs) into "
          f"{args.archive}: {size:.1f} MiB; not finished: seeds {pending or 'none'}")  # fmt: skip
    if size > 15:
        print("warning: over 15 MiB; the device tool brings back at most 16 MiB a file",
              file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
