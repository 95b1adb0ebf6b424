"""The ``medssl`` command line.

Each subcommand parses its options here and calls one function of the library; user
mistakes (:class:`MedsslError`) print as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from medssl.data.spec import DataSpec, add_data_arguments
from medssl.errors import MedsslError


def data_summary(args: argparse.Namespace) -> int:
    from medssl.data.splits import cases_shared_between_splits

    manifest, splits = DataSpec.from_args(args).load()
    codes, _ = manifest.case_codes()
    summary = manifest.summary()
    summary["splits"] = {
        name: {"images": int(rows.size), "cases": int(len(set(codes[rows].tolist())))}
        for name, rows in splits.indices.items()
    }
    summary["cases_shared_between_splits"] = cases_shared_between_splits(manifest, splits)
    summary["split_scheme"] = splits.scheme
    summary["warnings"] = [*manifest.warnings, *splits.warnings]
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"dataset      {manifest.name} ({manifest.task}, {manifest.num_classes} classes)")
    print(f"images       {summary['images']}")
    print(f"cases        {summary['cases']} ({summary['multi_image_cases']} with 2+ images)")
    print("classes      " + ", ".join(f"{k} {v}" for k, v in summary["classes"].items()))
    print("sources      " + ", ".join(f"{k} {v}" for k, v in summary["sources"].items()))
    for name, counts in summary["splits"].items():
        print(f"split {name:<6} {counts['images']} images, {counts['cases']} cases")
    print(f"cases shared between splits: {summary['cases_shared_between_splits']}")
    return 0


def load_config_file(path: str | None) -> dict:
    """Options from a YAML/JSON config file, keyed by option name (dashes or underscores)."""
    if not path:
        return {}
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise MedsslError(f"--config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise MedsslError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MedsslError(f"--config {path}: expected a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """Parse with a ``--config`` file's values as defaults; command-line flags win.

    A value in the file also satisfies a required option (``--dataset``, ``--out``, ...).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    found, _ = pre.parse_known_args(argv)
    config = load_config_file(found.config)
    command = next((a for a in argv if not a.startswith("-")), None)
    commands = parser._subparsers._group_actions[0].choices if parser._subparsers else {}
    if config and command in commands:
        sub = commands[command]
        actions = {a.dest: a for a in sub._actions}
        unknown = sorted(set(config) - set(actions))
        if unknown:
            raise MedsslError(f"--config {found.config}: unknown option(s) {', '.join(unknown)}")
        for key, value in config.items():
            actions[key].default = value
            actions[key].required = False
    return parser.parse_args(argv)


def add_speed_arguments(p: argparse.ArgumentParser) -> None:
    """Options that choose how fast a trainer runs, not what it learns (both trainers)."""
    from medssl.augment import AUGMENT_MODES
    from medssl.train.common import PRECISIONS

    p.add_argument(
        "--augment-mode", choices=AUGMENT_MODES, default="auto",
        help="per-sample: torchvision views in DataLoader workers; batch: kornia views of "
        "whole batches on the training device; auto: batch where kornia is installed",
    )  # fmt: skip
    p.add_argument(
        "--precision", choices=PRECISIONS, default="auto",
        help="auto: bf16 autocast on GPUs and on CPUs with native bf16, else fp32",
    )  # fmt: skip
    p.add_argument(
        "--num-workers", type=int, default=None,
        help="DataLoader worker processes (default: 0 for batch views on the CPU, else one "
        "per core up to 8)",
    )  # fmt: skip


def pretrain_command(args: argparse.Namespace) -> int:
    from medssl.augment import parse_overrides
    from medssl.train.pretrain import PretrainConfig, pretrain

    overrides = dict(args.augment_overrides or {})
    overrides.update(parse_overrides(args.aug))
    config = PretrainConfig(
        data=DataSpec.from_args(args).to_dict(),
        out=str(Path(args.out).expanduser().resolve()),
        method=args.method, backbone=args.backbone, image_size=args.image_size,
        small_stem=args.small_stem, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, lr_scaling=args.lr_scaling,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        temperature=args.temperature, proj_dim=args.proj_dim, augment=args.augment or "",
        augment_overrides=overrides, init=args.init, seed=args.seed,
        num_workers=args.num_workers, prefetch_factor=args.prefetch_factor,
        pin_memory=args.pin_memory, augment_mode=args.augment_mode,
        augment_on=args.augment_on or "",
        knn_every=args.knn_every, device=args.device,
        precision=args.precision, channels_last=args.channels_last, compile=args.compile,
        cache_dir=args.cache_dir, skip_unreadable=args.skip_unreadable,
        progress=not args.quiet, resume=args.resume,
    )  # fmt: skip
    metrics = pretrain(config)
    if args.json:
        print(json.dumps(metrics, indent=2))
    return 0


def add_pretrain_parser(commands) -> None:  # noqa: ANN001 - argparse's private type
    p = commands.add_parser("pretrain", help="SimCLR or MICLe self-supervised pretraining")
    p.set_defaults(func=pretrain_command)
    p.add_argument("--config", help="YAML file of options (command-line flags win)")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--method", choices=["simclr", "micle"], default="micle")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument(
        "--small-stem", action="store_true",
        help="3x3 stride-1 stem without max-pool (CIFAR-style; ~16x the compute at 64 px)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256, help="global batch (all processes)")
    p.add_argument("--optimizer", choices=["lars", "sgd", "adamw"], default="lars")
    p.add_argument("--lr", type=float, default=0.075, help="base learning rate")
    p.add_argument("--lr-scaling", choices=["sqrt", "linear"], default="sqrt",
                   help="sqrt: lr*sqrt(batch); linear: lr*batch/256")  # fmt: skip
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument("--warmup-epochs", type=float, default=10)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--proj-dim", type=int, default=128)
    p.add_argument("--augment", choices=["derm", "cxr"], help="preset (default by dataset)")
    p.add_argument("--aug", action="append", metavar="KEY=VALUE",
                   help="override one augmentation parameter, e.g. blur_p=0")  # fmt: skip
    p.add_argument("--augment-overrides", type=dict, default=None, help=argparse.SUPPRESS)
    p.add_argument("--init", default="random", help="random, a checkpoint file, or a run")
    p.add_argument("--seed", type=int, default=0)
    add_speed_arguments(p)
    p.add_argument("--prefetch-factor", type=int, default=4, help="batches queued per worker")
    p.add_argument("--pin-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="page-locked host batches (default: on with a GPU)")  # fmt: skip
    p.add_argument("--augment-on", choices=["cpu", "gpu"], default=None,
                   help="deprecated: use --augment-mode (cpu = per-sample, gpu = batch)")
    p.add_argument("--knn-every", type=int, default=0,
                   help="k-NN validation accuracy every N epochs (0: off)")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def finetune_command(args: argparse.Namespace) -> int:
    from medssl.train.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        data=DataSpec.from_args(args).to_dict(),
        out=str(Path(args.out).expanduser().resolve()),
        init=args.init if args.init == "random" else str(Path(args.init).expanduser().resolve()),
        label_fraction=args.label_fraction, seed=args.seed, backbone=args.backbone or "",
        small_stem=args.small_stem, image_size=args.image_size or 0, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        linear_probe=args.linear_probe, val_metric=args.val_metric, device=args.device,
        precision=args.precision, augment_mode=args.augment_mode,
        num_workers=args.num_workers, cache_dir=args.cache_dir,
        skip_unreadable=args.skip_unreadable, progress=not args.quiet, resume=args.resume,
    )  # fmt: skip
    metrics = finetune(config)
    if args.json:
        print(json.dumps(metrics, indent=2))
    return 0


def add_finetune_parser(commands) -> None:  # noqa: ANN001 - argparse's private type
    p = commands.add_parser("finetune", help="supervised fine-tuning with a label fraction")
    p.set_defaults(func=finetune_command)
    p.add_argument("--config", help="YAML file of options (command-line flags win)")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--init", default="random", help="random, a checkpoint file, or a run")
    p.add_argument("--label-fraction", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", help="default: the --init run's backbone, else resnet18")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--image-size", type=int, help="default: the --init run's size, else 64")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=["adamw", "sgd", "lars"], default="adamw")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=1)
    p.add_argument("--linear-probe", action="store_true", help="freeze the backbone")
    p.add_argument("--val-metric", default="auto", help="model selection metric (auc_macro)")
    p.add_argument("--device", default="auto")
    add_speed_arguments(p)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")


def evaluate_command(args: argparse.Namespace) -> int:
    from medssl.predict import evaluate_run, format_evaluation

    data = DataSpec.from_args(args).to_dict() if args.dataset else None
    mean_over = [s.strip() for s in args.mean_over.split(",")] if args.mean_over else None
    metrics = evaluate_run(
        args.model, args.split, data, args.class_map, args.n_boot, mean_over, args.device,
        allow_training_images=args.allow_training_images, positive_class=args.positive_class,
        target_sensitivity=args.target_sensitivity,
        temperature_scaling=args.temperature_scaling, keep_case_ids=args.keep_case_ids,
        skip_unreadable=args.skip_unreadable, subgroups=args.subgroups,
    )  # fmt: skip
    print(json.dumps(metrics, indent=2) if args.json else format_evaluation(metrics))
    return 0


def add_evaluate_parser(commands) -> None:  # noqa: ANN001 - argparse's private type
    p = commands.add_parser("evaluate", help="score a fine-tuned run on a split")
    p.set_defaults(func=evaluate_command)
    p.add_argument("--model", required=True, help="a finished finetune run directory")
    p.add_argument(
        "--split", default=None,
        help="test, shift, val, train or all (default: test of the model's own data; all of "
        "another dataset, scored whole)",
    )  # fmt: skip
    add_data_arguments(p, required=False)
    p.add_argument("--class-map", help="YAML/JSON {dataset class: model class or null}")
    p.add_argument("--mean-over", help="comma-separated findings for the mean AUC")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (by case)")
    p.add_argument(
        "--allow-training-images", action="store_true",
        help="score images the model was trained on (its train split, or all of its data)",
    )  # fmt: skip
    p.add_argument(
        "--positive-class", metavar="CLASS",
        help="class (one-vs-rest) or finding of the operating point (default: the positive "
        "class of a two-class evaluation)",
    )  # fmt: skip
    p.add_argument(
        "--target-sensitivity", type=float, default=0.95,
        help="the operating point's sensitivity on the model's val split (default 0.95)",
    )  # fmt: skip
    p.add_argument(
        "--temperature-scaling", action="store_true",
        help="divide the logits by a temperature fitted on the model's val split",
    )  # fmt: skip
    p.add_argument(
        "--keep-case-ids", action="store_true",
        help="store case ids in clear in predictions_*.npz (default: salted hashes)",
    )  # fmt: skip
    p.add_argument(
        "--subgroups", action=argparse.BooleanOptionalAction, default=True,
        help="metrics per sex, age band, site, source, view where the data has them",
    )  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")


def predict_command(args: argparse.Namespace) -> int:
    from medssl.inference import predict_images

    result = predict_images(
        args.model, args.images, image_column=args.image_column, case_column=args.case_column,
        skip_unreadable=args.skip_unreadable, batch_size=args.batch_size, device=args.device,
        progress=not args.quiet,
    )  # fmt: skip
    written = result.write(args.out, args.case_out)
    summary = {
        "images": len(result.images),
        "cases": None if result.cases is None else len(result.cases),
        "skipped": len(result.skipped),
        "files": {k: str(v) for k, v in written.items()},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['images']} image predictions -> {written['images']}")
        if result.cases is not None:
            print(f"{summary['cases']} case predictions -> {written['cases']}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s), listed in "
              f"{written['skipped']}:", file=sys.stderr)  # fmt: skip
        for image, reason in result.skipped[:20]:
            print(f"  {image}: {reason}", file=sys.stderr)
        if len(result.skipped) > 20:
            print(f"  ... and {len(result.skipped) - 20} more", file=sys.stderr)
    return 0


def add_predict_parser(commands) -> None:  # noqa: ANN001 - argparse's private type
    p = commands.add_parser(
        "predict", help="class probabilities for unlabeled images from a fine-tuned run"
    )
    p.set_defaults(func=predict_command)
    p.add_argument("--config", help="YAML file of options (command-line flags win)")
    p.add_argument("--model", required=True, help="a finished finetune run directory")
    p.add_argument("--images", required=True,
                   help="a folder (every image below it) or a CSV listing image paths")  # fmt: skip
    p.add_argument("--out", required=True,
                   help="predictions CSV: image, [case_id], prob_<class>..., prediction; it "
                   "names your images and cases as you gave them (nothing is hashed)")  # fmt: skip
    p.add_argument("--image-column", default="image", help="CSV: image path column")
    p.add_argument("--case-column", help="CSV: case column; adds per-case rows (mean of images)")
    p.add_argument("--case-out", help="per-case CSV (default: OUT's name + .cases.csv)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="leave out missing or undecodable images and list them "
                   "(OUT's name + .skipped.csv) instead of stopping")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def export_command(args: argparse.Namespace) -> int:
    from medssl.export import export_model

    meta = export_model(args.model, args.format, args.out, opset=args.opset)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    print(f"{args.format} -> {args.out}")
    for key in ("input", "preprocessing", "normalisation", "output"):
        print(f"  {key:<14} {meta[key]}")
    print(f"  {'classes':<14} {', '.join(meta['class_names'])}")
    return 0


def add_export_parser(commands) -> None:  # noqa: ANN001 - argparse's private type
    p = commands.add_parser(
        "export", help="a fine-tuned classifier as a TorchScript or ONNX file (probabilities out)"
    )
    p.set_defaults(func=export_command)
    p.add_argument("--model", required=True, help="a finished finetune run directory")
    p.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    p.add_argument("--out", required=True, help="the file to write (.pt or .onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--json", action="store_true", help="print the stored metadata as JSON")


def knn_command(args: argparse.Namespace) -> int:
    from medssl.knn import compare_backbones, format_comparison

    inits = [str(Path(i).expanduser().resolve()) for i in args.init or []]
    result = compare_backbones(
        DataSpec.from_args(args).to_dict(), inits, split=args.split,
        backbone=args.backbone or "", image_size=args.image_size or 0,
        small_stem=args.small_stem, k=args.k, n_boot=args.n_boot, seed=args.seed,
        device=args.device, cache_dir=args.cache_dir, progress=not args.json,
    )  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else format_comparison(result))
    return 0


def add_knn_parser(commands) -> None:  # noqa: ANN001 - argparse's private type
    p = commands.add_parser(
        "knn", help="k-NN scores of pretrained backbones vs a random one, no training"
    )
    p.set_defaults(func=knn_command)
    add_data_arguments(p)
    p.add_argument("--init", action="append", metavar="RUN_OR_FILE",
                   help="a pretraining run or checkpoint (repeatable)")  # fmt: skip
    p.add_argument("--split", default="val", help="the query split (val, test, shift)")
    p.add_argument("--k", type=int, default=20, help="neighbours per query")
    p.add_argument("--backbone", help="default: the --init run's backbone, else resnet18")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--image-size", type=int, help="default: the --init run's size, else 64")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (by case)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random reference")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")


def sweep_command(args: argparse.Namespace) -> int:
    from medssl.sweep import run_sweep

    run_sweep(args.protocol, args.out, progress=not args.quiet)
    return 0


def add_sweep_parser(commands) -> None:  # noqa: ANN001 - argparse's private type
    p = commands.add_parser(
        "sweep", help="pretraining runs, then inits x label fractions x seeds -> table + report"
    )
    p.set_defaults(func=sweep_command)
    p.add_argument("protocol", help="protocol YAML (see medssl.sweep)")
    p.add_argument("--out", required=True, help="sweep folder (resumed when it exists)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output of the runs")


def demo_command(args: argparse.Namespace) -> int:
    from medssl.demo import run_demo

    if args.root and not args.dataset:
        raise MedsslError("--root needs --dataset (the demo runs on synthetic data without)")
    run_demo(args.out, args.dataset, args.root, args.budget, progress=not args.quiet)
    return 0


def add_demo_parser(commands) -> None:  # noqa: ANN001 - argparse's private type
    from medssl.data.adapters import ADAPTERS
    from medssl.demo import BUDGETS

    p = commands.add_parser(
        "demo", help="SimCLR vs MICLe vs random end to end (synthetic data without --dataset)"
    )
    p.set_defaults(func=demo_command)
    p.add_argument("--dataset", choices=sorted(ADAPTERS), help="real data (default: synthetic)")
    p.add_argument("--root", help="dataset folder in its publisher's layout")
    p.add_argument("--out", default="medssl-demo", help="demo folder (a finished one is reused)")
    p.add_argument("--budget", choices=BUDGETS, default="default",
                   help="smoke: a tiny run that only checks the pipeline")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no per-epoch output of the runs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medssl",
        description="Self-supervised pretraining (SimCLR, MICLe) for medical image classifiers",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="inspect a dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    summary = data_commands.add_parser("summary", help="images, cases, classes, splits")
    add_data_arguments(summary)
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.set_defaults(func=data_summary)
    add_pretrain_parser(commands)
    add_finetune_parser(commands)
    add_evaluate_parser(commands)
    add_predict_parser(commands)
    add_export_parser(commands)
    add_knn_parser(commands)
    add_sweep_parser(commands)
    add_demo_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse_with_config(parser, argv)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except MedsslError as exc:
        print(f"medssl: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head and the like
        return 0
    except KeyboardInterrupt:
        print("medssl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
