"""The ``medssl`` command line.

This module only registers each subcommand's flags and hands the parsed values to its
module, :mod:`medssl.commands` ``.<name>`` (``medssl knn`` -> ``medssl/commands/knn.py``),
printing what that returns; user mistakes (:class:`MedsslError`) print as one line on
stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from medssl.errors import MedsslError
from medssl.interrupts import Interrupted, signals_interrupt


def data_summary_command(args: argparse.Namespace) -> int:
    from medssl.cli_options import data_given, spec_from
    from medssl.commands.data import format_summary, summarize

    manifest, summary = summarize(spec_from(data_given(args)))
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(summary, indent=2) if args.json else format_summary(manifest, summary))
    return 0


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """Parse with a ``--config`` file's values as defaults; command-line flags win.

    A value in the file also satisfies a required option (``--dataset``, ``--out``, ...).
    Commands with a config class (pretrain, finetune) read their file themselves
    (:func:`medssl.cli_options.trainer_config`), checked like their flags.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    found, _ = pre.parse_known_args(argv)
    config = {}
    if found.config:
        from medssl.cli_options import load_config_file

        config = load_config_file(found.config)
    command = next((a for a in argv if not a.startswith("-")), None)
    commands = parser._subparsers._group_actions[0].choices if parser._subparsers else {}
    if config and command in commands and commands[command].get_default("config_class") is None:
        sub = commands[command]
        actions = {a.dest: a for a in sub._actions}
        unknown = sorted(set(config) - set(actions))
        if unknown:
            raise MedsslError(f"--config {found.config}: unknown option(s) {', '.join(unknown)}")
        for key, value in config.items():
            actions[key].default = value
            actions[key].required = False
    return parser.parse_args(argv)


def pretrain_command(args: argparse.Namespace) -> int:
    from medssl.cli_options import trainer_config
    from medssl.commands.pretrain import run_pretrain
    from medssl.train.pretrain import PretrainConfig

    config, given = trainer_config(PretrainConfig, args)
    metrics = run_pretrain(config, given.name)  # messages name options as the user wrote them
    if args.json:
        print(json.dumps(metrics, indent=2))
    return 0


def add_pretrain_parser(p: argparse.ArgumentParser) -> None:
    from medssl.cli_options import add_data_flags, add_option_flags
    from medssl.train.pretrain import PretrainConfig

    p.set_defaults(func=pretrain_command, config_class=PretrainConfig)
    p.add_argument("--config", help="YAML file of options (command-line flags win)")
    add_data_flags(p, extras=False)
    add_option_flags(p, PretrainConfig)
    p.add_argument("--aug", action="append", metavar="KEY=VALUE",
                   help="set one augmentation parameter, e.g. blur_p=0")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def finetune_command(args: argparse.Namespace) -> int:
    from medssl.cli_options import trainer_config
    from medssl.commands.finetune import run_finetune
    from medssl.train.finetune import FinetuneConfig

    config, given = trainer_config(FinetuneConfig, args)
    metrics = run_finetune(config, given.name)  # messages name options as the user wrote them
    if args.json:
        print(json.dumps(metrics, indent=2))
    return 0


def add_finetune_parser(p: argparse.ArgumentParser) -> None:
    from medssl.cli_options import add_data_flags, add_option_flags
    from medssl.train.finetune import FinetuneConfig

    p.set_defaults(func=finetune_command, config_class=FinetuneConfig)
    p.add_argument("--config", help="YAML file of options (command-line flags win)")
    add_data_flags(p, extras=False)
    add_option_flags(p, FinetuneConfig)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def evaluate_command(args: argparse.Namespace) -> int:
    from medssl.cli_options import data_given, spec_from
    from medssl.commands.evaluate import evaluate_run, format_evaluation

    given = data_given(args)
    data = spec_from(given).to_dict() if len(given) else None
    mean_over = [s.strip() for s in args.mean_over.split(",")] if args.mean_over else None
    metrics = evaluate_run(
        args.model, args.split, data, args.class_map, args.n_boot, mean_over, args.device,
        allow_training_images=args.allow_training_images, positive_class=args.positive_class,
        target_sensitivity=args.target_sensitivity,
        temperature_scaling=args.temperature_scaling, keep_case_ids=args.keep_case_ids,
        skip_unreadable=args.skip_unreadable, subgroups=args.subgroups,
    )  # fmt: skip
    print(json.dumps(metrics, indent=2) if args.json else format_evaluation(metrics, args.model))
    return 0


def add_evaluate_parser(p: argparse.ArgumentParser) -> None:
    from medssl.cli_options import add_data_flags

    p.set_defaults(func=evaluate_command)
    p.add_argument("--model", required=True, help="a finished finetune run directory")
    p.add_argument(
        "--split", default=None,
        help="test, shift, val, train or all (default: test of the model's own data; all of "
        "another dataset, scored whole)",
    )  # fmt: skip
    add_data_flags(p)
    p.add_argument("--class-map", help="YAML/JSON {dataset class: model class or null}")
    p.add_argument("--mean-over", help="comma-separated findings for the mean AUC")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples for the 95%% intervals, drawn by case (default "
                   "1000)")  # fmt: skip
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
    p.add_argument("--device", default="auto",
                   help="auto (a GPU if there is one, else the CPU), cpu, cuda, "
                   "cuda:N")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help="print the metrics as JSON (as eval_<split>.json holds them)")  # fmt: skip


def predict_command(args: argparse.Namespace) -> int:
    from medssl.commands.predict import (
        format_skipped,
        format_written,
        predict_images,
        written_summary,
    )

    result = predict_images(
        args.model, args.images, image_column=args.image_column, case_column=args.case_column,
        skip_unreadable=args.skip_unreadable, batch_size=args.batch_size, device=args.device,
        progress=not args.quiet, out=args.out, case_out=args.case_out,
    )  # fmt: skip
    written = result.write(args.out, args.case_out)
    if args.json:
        print(json.dumps(written_summary(result, written), indent=2))
    else:
        print(format_written(result, written))
    if result.skipped:
        print(format_skipped(result, written), file=sys.stderr)
    return 0


def add_predict_parser(p: argparse.ArgumentParser) -> None:
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
    from medssl.commands.export import export_model, format_export

    meta = export_model(args.model, args.format, args.out, opset=args.opset)
    print(json.dumps(meta, indent=2) if args.json else format_export(meta, args.format, args.out))
    return 0


def add_export_parser(p: argparse.ArgumentParser) -> None:
    from medssl.exporting import DEFAULT_OPSET

    p.set_defaults(func=export_command)
    p.add_argument("--model", required=True,
                   help="a finished finetune run (its classifier: probabilities out) or "
                   "pretraining run (its backbone: features out, for embedding "
                   "services)")  # fmt: skip
    p.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    p.add_argument("--out", required=True, help="the file to write (.pt or .onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset version (default {DEFAULT_OPSET})")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the stored metadata as JSON")


def embed_command(args: argparse.Namespace) -> int:
    from medssl.cli_options import data_given, spec_from
    from medssl.commands.embed import format_embed, format_skipped, run_embed, summary

    result = run_embed(
        args.model, args.images, args.out, embeddings=args.embeddings, query=args.query,
        top_k=args.top_k, neighbours_out=args.neighbours_out, image_column=args.image_column,
        case_column=args.case_column, keep_case_ids=args.keep_case_ids,
        skip_unreadable=args.skip_unreadable, batch_size=args.batch_size, device=args.device,
        progress=not args.quiet, backbone=args.backbone, image_size=args.image_size,
        small_stem=args.small_stem, patch_size=args.patch_size,
        class_column=args.class_column, source_column=args.source_column, map_out=args.map,
        data=spec_from(given).to_dict() if len(given := data_given(args)) else None,
    )  # fmt: skip
    print(json.dumps(summary(result), indent=2) if args.json else format_embed(result))
    skipped = format_skipped(result)
    if skipped:
        print(skipped, file=sys.stderr)
    return 0


def add_embed_parser(p: argparse.ArgumentParser) -> None:
    from medssl.cli_options import add_data_flags

    p.set_defaults(func=embed_command)
    p.add_argument("--config", help="YAML file of options (command-line flags win)")
    # --model, --images and --out are checked by medssl.commands.embed (one line each)
    p.add_argument("--model", help="a finetune run, a pretraining run or a backbone weights file")
    p.add_argument("--images",
                   help="a folder (every image below it) or a CSV listing image paths (or "
                   "--dataset: a dataset's images, cases, classes and sources)")  # fmt: skip
    p.add_argument("--out", help="embeddings file: .parquet (image, case_id, embedding) or .npy "
                   "(+ .images.csv, .meta.json beside it); case ids are salted hashes unless "
                   "--keep-case-ids")  # fmt: skip
    p.add_argument("--image-column", default="image", help="CSV: image path column")
    p.add_argument("--case-column", help="CSV: case column (stored hashed)")
    p.add_argument("--class-column", help="CSV: a class column, stored and coloured by --map")
    p.add_argument("--source-column", help="CSV: a source/site column, likewise")
    p.add_argument("--map", metavar="PNG",
                   help="a 2-D t-SNE map of the embeddings, by class and by source")  # fmt: skip
    p.add_argument("--keep-case-ids", action="store_true",
                   help="store case ids in clear (default: HMAC-SHA256 under a salt)")  # fmt: skip
    p.add_argument("--skip-unreadable", action="store_true",
                   help="leave out missing or undecodable images and list them "
                   "(OUT's name + .skipped.csv) instead of stopping")  # fmt: skip
    p.add_argument("--query", metavar="IMAGE",
                   help="print the --top-k images most similar to this one (cosine)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=10, help="neighbours of --query (default 10)")
    p.add_argument("--embeddings", metavar="FILE",
                   help="a saved embeddings file to search (instead of --images)")  # fmt: skip
    p.add_argument("--neighbours-out", metavar="CSV", help="also write the neighbours to a CSV")
    p.add_argument("--backbone", help="a weights file's backbone (default: the torchvision "
                   "ResNet its shapes say, else resnet18)")  # fmt: skip
    p.add_argument("--image-size", type=int, help="a weights file's image size (default 64)")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="a weights file's ResNet stem (default: as its conv1)")  # fmt: skip
    p.add_argument("--patch-size", type=int,
                   help="a timm ViT weights file's patch side (default: the model's)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_data_flags(p, extras=False)


def knn_command(args: argparse.Namespace) -> int:
    from medssl.cli_options import data_given, spec_from
    from medssl.commands.knn import compare_backbones, format_comparison

    inits = [str(Path(i).expanduser().resolve()) for i in getattr(args, "init", None) or []]
    given = {k: getattr(args, k) for k in _KNN_OPTIONS if hasattr(args, k)}  # defaults: knn's
    result = compare_backbones(
        spec_from(data_given(args)).to_dict(), inits, cache_dir=args.cache_dir,
        progress=not args.json, **given,
    )  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else format_comparison(result))
    return 0


#: options of ``medssl knn`` passed on only when given (the defaults are compare_backbones')
_KNN_OPTIONS = (
    "split", "k", "backbone", "small_stem", "image_size", "patch_size", "n_boot", "seed", "device",
)  # fmt: skip


def add_knn_parser(p: argparse.ArgumentParser) -> None:
    import inspect

    from medssl.cli_options import add_data_flags
    from medssl.commands.knn import compare_backbones

    defaults = {k: v.default for k, v in inspect.signature(compare_backbones).parameters.items()}
    p.set_defaults(func=knn_command)
    add_data_flags(p)
    p.add_argument("--init", action="append", metavar="RUN_OR_FILE",
                   help="a pretraining run or checkpoint (repeatable)")  # fmt: skip
    split_help = f"the query split (val, test, shift; default {defaults['split']})"
    p.add_argument("--split", help=split_help)
    p.add_argument("--k", type=int, help=f"neighbours per query (default {defaults['k']})")
    p.add_argument("--backbone", help="default: the --init run's backbone, else resnet18")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction)
    p.add_argument("--image-size", type=int, help="default: the --init run's size, else 64")
    p.add_argument("--patch-size", type=int,
                   help="a timm transformer's patch side (default: the --init run's, else the "
                   "model's)")  # fmt: skip
    p.add_argument("--n-boot", type=int,
                   help=f"bootstrap resamples (by case; default {defaults['n_boot']})")  # fmt: skip
    p.add_argument("--seed", type=int,
                   help=f"seed of the random reference (default {defaults['seed']})")  # fmt: skip
    p.add_argument("--device", help=f"default: {defaults['device']}")
    p.add_argument("--json", action="store_true", default=False)


def sweep_command(args: argparse.Namespace) -> int:
    from medssl.commands.sweep import run_sweep

    run_sweep(args.protocol, args.out, progress=not args.quiet, record=args.record)
    return 0


def add_sweep_parser(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=sweep_command)
    p.add_argument("protocol", help="protocol YAML (see medssl.sweep)")
    p.add_argument("--out", required=True, help="sweep folder (resumed when it exists)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output of the runs")
    p.add_argument(
        "--record", metavar="DIR",
        help="keep the sweep's record in DIR (results, logs, evaluations, shared pretraining "
        "backbones; no training state): restored into --out first and updated after each "
        "finished seed, so the sweep resumes on a machine without --out",
    )  # fmt: skip


def demo_command(args: argparse.Namespace) -> int:
    from medssl.commands.demo import run_demo

    run_demo(
        args.out, args.dataset, args.root, args.budget, progress=not args.quiet, seed=args.seed
    )
    return 0


def add_demo_parser(p: argparse.ArgumentParser) -> None:
    from medssl.data.adapters import DATASETS
    from medssl.demo import BUDGETS

    p.set_defaults(func=demo_command)
    p.add_argument("--dataset", choices=sorted(DATASETS), help="real data (default: synthetic)")
    p.add_argument("--root", help="dataset folder in its publisher's layout")
    p.add_argument("--out", default="medssl-demo", help="demo folder (a finished one is reused)")
    p.add_argument("--budget", choices=BUDGETS, default="default",
                   help="smoke: a tiny run that only checks the pipeline")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="pretraining and fine-tuning seed (the data stay the same)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no per-epoch output of the runs")


def add_data_parser(p: argparse.ArgumentParser) -> None:
    from medssl.cli_options import add_data_flags

    data_commands = p.add_subparsers(dest="data_command", required=True)
    summary = data_commands.add_parser("summary", help="images, cases, classes, splits")
    add_data_flags(summary)
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.set_defaults(func=data_summary_command)


#: the subcommands: name, one-line help, the function that adds its flags, parser options
COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None], dict], ...] = (
    ("data", "inspect a dataset", add_data_parser, {}),
    ("pretrain", "SimCLR or MICLe self-supervised pretraining", add_pretrain_parser, {}),
    ("finetune", "supervised fine-tuning with a label fraction", add_finetune_parser, {}),
    ("evaluate", "score a fine-tuned run on a split", add_evaluate_parser, {}),
    ("predict", "class probabilities for unlabeled images from a fine-tuned run",
     add_predict_parser, {}),
    ("export", "a fine-tuned classifier or a pretrained backbone as a TorchScript or ONNX file",
     add_export_parser, {}),
    ("embed", "a backbone's features for images (.parquet/.npy); nearest-case retrieval",
     add_embed_parser, {}),
    ("knn", "k-NN scores of pretrained backbones vs a random one, no training",
     add_knn_parser, {"argument_default": argparse.SUPPRESS}),
    ("sweep", "pretraining runs, then inits x label fractions x seeds -> table + report",
     add_sweep_parser, {}),
    ("demo", "SimCLR vs MICLe vs random end to end (synthetic data without --dataset)",
     add_demo_parser, {}),
)  # fmt: skip


class _LazyParsers(dict):
    """The subcommand parsers by name, each given its flags when first looked up (by
    argparse when the command is parsed, or by anyone reading its help). Their flags come
    from the trainers' configs, whose modules import torch: ``medssl --help`` and every
    other command need not pay for that."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def __getitem__(self, name: str) -> argparse.ArgumentParser:
        parser = super().__getitem__(name)
        add_flags = self.pending.pop(name, None)
        if add_flags is not None:
            add_flags(parser)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medssl",
        description="Self-supervised pretraining (SimCLR, MICLe) for medical image classifiers",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    lazy = _LazyParsers()
    commands._name_parser_map = commands.choices = lazy
    for name, help_text, add_flags, options in COMMANDS:
        commands.add_parser(name, help=help_text, **options)
        lazy.pending[name] = add_flags
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        with signals_interrupt():  # SIGTERM stops a command as SIGINT does
            args = parse_with_config(parser, argv)
            func: Callable[[argparse.Namespace], int] = args.func
            return func(args)
    except MedsslError as exc:
        print(f"medssl: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head and the like
        return 0
    except KeyboardInterrupt as exc:
        stop = exc if isinstance(exc, Interrupted) else Interrupted()
        where = f": {stop.where}" if stop.where else ""
        print(f"medssl: interrupted ({stop.signal_name}){where}", file=sys.stderr)
        return stop.exit_status


if __name__ == "__main__":
    sys.exit(main())
