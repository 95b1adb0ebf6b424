"""``medssl embed``: a backbone's features for every image, and nearest-case retrieval.

The work is :mod:`medssl.embedding`; this module checks the options as a whole (before any
work: a missing ``--model``, an unknown ``--out`` extension, an output that is an input are
one line each), runs it and formats what ``medssl embed`` prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medssl.errors import MedsslError


def run_embed(
    model: str | None = None,
    images: str | None = None,
    out: str | None = None,
    *,
    embeddings: str | None = None,
    query: str | None = None,
    top_k: int = 10,
    neighbours_out: str | None = None,
    image_column: str = "image",
    case_column: str | None = None,
    keep_case_ids: bool = False,
    skip_unreadable: bool = False,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    backbone: str | None = None,
    image_size: int | None = None,
    small_stem: bool | None = None,
    patch_size: int | None = None,
    class_column: str | None = None,
    source_column: str | None = None,
    map_out: str | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Embed ``images`` into ``out`` and/or retrieve the ``top_k`` nearest of ``query``;
    ``map_out`` draws a t-SNE map (PNG) of the embeddings coloured by their class and source
    (``class_column``, ``source_column``). ``data`` (a data spec) embeds a dataset's images
    instead of ``images``, with its case ids, classes and sources.

    Returns ``{"embeddings": Embeddings, "written": {kind: path}, "neighbours": DataFrame or
    None}``.
    """
    from medssl.embedding import (
        check_files,
        check_format,
        dataset_images,
        embed_images,
        load_embedding_model,
        nearest_cases,
    )

    if data:
        if images:
            raise MedsslError("give --images or --dataset, not both")
        for flag, value in (("--class-column", class_column), ("--source-column", source_column),
                            ("--case-column", case_column)):  # fmt: skip
            if value:
                raise MedsslError(f"{flag} is for an --images CSV; --dataset gives its own")
        images = data.get("root") or data["dataset"]
    if images and embeddings:
        raise MedsslError("give --images (to embed them) or --embeddings (a saved file), not both")
    if not images and not embeddings:
        raise MedsslError("--images or --dataset is required (or --embeddings FILE with --query)")
    if embeddings and not query and not map_out:
        raise MedsslError(f"--embeddings {embeddings}: give --query IMAGE or --map PNG")
    if images and not model:
        raise MedsslError(
            "--model is required: a finetune run, a pretraining run or a weights file"
        )
    if images and not out and not query and not map_out:
        raise MedsslError("--out is required (.parquet or .npy), unless --query or --map")
    if embeddings and out:
        raise MedsslError("--out writes new embeddings of --images; with --embeddings leave it out")
    if top_k < 1:
        raise MedsslError(f"--top-k must be >= 1, got {top_k}")
    if embeddings:
        check_format(embeddings, "--embeddings")
    if out:
        check_format(out)
    if neighbours_out:
        if Path(neighbours_out).suffix.lower() != ".csv":
            raise MedsslError(f"--neighbours-out {neighbours_out}: give a .csv file")
        if not query:
            raise MedsslError("--neighbours-out needs --query")
    if map_out and Path(map_out).suffix.lower() != ".png":
        raise MedsslError(f"--map {map_out}: give a .png file")
    check_files(
        model, data.get("root") if data else images, out, embeddings=embeddings, query=query,
        neighbours_out=neighbours_out, map_out=map_out,
        hashed_ids=bool(case_column or data) and not keep_case_ids,
    )  # fmt: skip

    result: dict[str, Any] = {"embeddings": None, "written": {}, "neighbours": None}
    embedder: Any = model
    if images:
        embedder = load_embedding_model(
            model, backbone=backbone, image_size=image_size, small_stem=small_stem,
            patch_size=patch_size, device=device,
        )  # fmt: skip
        found = embed_images(
            embedder, dataset_images(data) if data else images, out=out,
            image_column=image_column, case_column=case_column,
            keep_case_ids=keep_case_ids, skip_unreadable=skip_unreadable,
            batch_size=batch_size, progress=progress, class_column=class_column,
            source_column=source_column,
        )  # fmt: skip
        result["embeddings"] = found
        if out:
            result["written"] = found.write(out)
    if embeddings and map_out:
        from medssl.embedding import read_embeddings

        result["embeddings"] = read_embeddings(embeddings)
    if map_out:
        result["written"]["map"] = result["embeddings"].plot_map(map_out)
    if query:
        source = result["embeddings"] or embeddings
        table = nearest_cases(query, source, embedder, top_k, device)
        result["neighbours"] = table
        if neighbours_out:
            from medssl.fileio import atomic_write

            path = Path(neighbours_out).expanduser()
            result["written"]["neighbours"] = atomic_write(
                path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.7g")
            )
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """What ``medssl embed --json`` prints."""
    found = result["embeddings"]
    neighbours = result["neighbours"]
    return {
        "images": None if found is None else len(found.images),
        "feature_dim": None if found is None else int(found.features.shape[1]),
        "skipped": 0 if found is None else len(found.skipped),
        "files": {k: str(v) for k, v in result["written"].items()},
        "neighbours": None if neighbours is None else neighbours.to_dict("records"),
    }


def format_embed(result: dict[str, Any]) -> str:
    """What ``medssl embed`` prints: what was written, and the nearest images."""
    lines = []
    found, written = result["embeddings"], result["written"]
    if found is not None and "embeddings" in written:
        lines.append(
            f"{len(found.images)} embeddings ({found.features.shape[1]} features, "
            f"{found.meta.get('backbone')}) -> {written['embeddings']}"
        )
        lines += [f"  {kind}: {path}" for kind, path in written.items()
                  if kind not in ("embeddings", "skipped", "neighbours", "map")]  # fmt: skip
    if "map" in written:
        lines.append(f"t-SNE map of {len(found.images)} embeddings -> {written['map']}")
    neighbours = result["neighbours"]
    if neighbours is not None:
        lines.append(f"nearest {len(neighbours)} (cosine):")
        for image in neighbours.attrs.get("left_out", []):
            lines.append(f"  (the query itself, {image}, is left out)")
        case = "case_id" in neighbours.columns
        for row in neighbours.itertuples(index=False):
            ident = f"  case {row.case_id}" if case else ""
            lines.append(
                f"  {row.rank:>3}  {row.similarity:.4f}  (distance {row.distance:.4f})  "
                f"{row.image}{ident}"
            )
        if "neighbours" in written:
            lines.append(f"  -> {written['neighbours']}")
    return "\n".join(lines)


def format_skipped(result: dict[str, Any], shown: int = 20) -> str:
    """The images left out as unreadable (the first ``shown``), for stderr; "" when none."""
    found = result["embeddings"]
    if found is None or not found.skipped:
        return ""
    where = result["written"].get("skipped")
    lines = [f"skipped {len(found.skipped)} unreadable image(s)"
             + (f", listed in {where}:" if where else ":")]  # fmt: skip
    lines += [f"  {image}: {reason}" for image, reason in found.skipped[:shown]]
    if len(found.skipped) > shown:
        lines.append(f"  ... and {len(found.skipped) - shown} more")
    return "\n".join(lines)
