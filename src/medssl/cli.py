"""The ``medssl`` command line.

Each subcommand parses its options here and calls one function of the library; user
mistakes (:class:`MedsslError`) print as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

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
    summary["warnings"] = list(manifest.warnings)
    for warning in manifest.warnings:
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
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
