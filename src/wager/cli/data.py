"""``wager data``: inspect, validate and download datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from wager.cli.common import (
    FormatOpt,
    JsonFlag,
    _flag_error,
    console,
    data_app,
    err_console,
    print_json,
)
from wager.cli.render import render_description, render_report

# ----------------------------------------------------------------------------- data


def _table_schema(
    user_col: str,
    item_col: str,
    label_col: str | None,
    label_kind: str,
    rating_min: float | None,
    rating_max: float | None,
    weight_col: str | None,
    impressions_col: str | None,
    clicks_col: str | None,
    timestamp_col: str | None,
    propensity_col: str | None = None,
):
    from wager.data.schema import Schema

    rating_range = None
    if rating_min is not None or rating_max is not None:
        if rating_min is None or rating_max is None:
            raise _flag_error("--rating-min", "--rating-min and --rating-max go together")
        rating_range = (rating_min, rating_max)
    return Schema(
        user=user_col,
        item=item_col,
        label=label_col,
        label_kind=label_kind,  # type: ignore[arg-type]  # a str; Schema checks the value
        rating_range=rating_range,
        weight=weight_col,
        impressions=impressions_col,
        clicks=clicks_col,
        timestamp=timestamp_col,
        propensity=propensity_col,
    )


UserColOpt = Annotated[str, typer.Option("--user-col", help="User id column (table formats).")]
ItemColOpt = Annotated[str, typer.Option("--item-col", help="Item id column (table formats).")]
LabelColOpt = Annotated[
    str | None, typer.Option("--label-col", help="Label column: rating, 0/1 click or CTR.")
]
LabelKindOpt = Annotated[str, typer.Option("--label-kind", help="rating | click | ctr")]
RatingMinOpt = Annotated[float | None, typer.Option("--rating-min", help="Lowest valid rating.")]
RatingMaxOpt = Annotated[float | None, typer.Option("--rating-max", help="Highest valid rating.")]
WeightColOpt = Annotated[str | None, typer.Option("--weight-col", help="Sample weight column.")]
ImpColOpt = Annotated[
    str | None, typer.Option("--impressions-col", help="Impression count column (CTR data).")
]
ClicksColOpt = Annotated[
    str | None, typer.Option("--clicks-col", help="Click count column (CTR data).")
]
TsColOpt = Annotated[str | None, typer.Option("--timestamp-col", help="Timestamp column.")]
PropColOpt = Annotated[
    str | None, typer.Option("--propensity-col", help="Logging propensity column, in (0, 1].")
]
UserFeatOpt = Annotated[
    Path | None, typer.Option("--user-features", help="User feature table keyed by user id.")
]
ItemFeatOpt = Annotated[
    Path | None, typer.Option("--item-features", help="Item feature table keyed by item id.")
]


def _load(
    path: Path, fmt: str, schema: Any, user_features: Path | None, item_features: Path | None
):
    from wager.data.loaders import load_dataset

    return load_dataset(
        path, fmt, schema, user_features_path=user_features, item_features_path=item_features
    )


@data_app.command("info")
def data_info(
    path: Annotated[Path, typer.Argument(help="Data directory or table file.")],
    fmt: FormatOpt = "auto",
    user_col: UserColOpt = "user_id",
    item_col: ItemColOpt = "item_id",
    label_col: LabelColOpt = None,
    label_kind: LabelKindOpt = "rating",
    rating_min: RatingMinOpt = None,
    rating_max: RatingMaxOpt = None,
    weight_col: WeightColOpt = None,
    impressions_col: ImpColOpt = None,
    clicks_col: ClicksColOpt = None,
    timestamp_col: TsColOpt = None,
    propensity_col: PropColOpt = None,
    user_features: UserFeatOpt = None,
    item_features: ItemFeatOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Summarise a dataset: users, items, interactions, labels, features, sparsity."""
    from wager.data.info import describe

    schema = _table_schema(
        user_col,
        item_col,
        label_col,
        label_kind,
        rating_min,
        rating_max,
        weight_col,
        impressions_col,
        clicks_col,
        timestamp_col,
        propensity_col,
    )
    summary = describe(_load(path, fmt, schema, user_features, item_features))
    if as_json:
        print_json(summary)
    else:
        render_description(summary, console)


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="Data directory or table file.")],
    fmt: FormatOpt = "auto",
    user_col: UserColOpt = "user_id",
    item_col: ItemColOpt = "item_id",
    label_col: LabelColOpt = None,
    label_kind: LabelKindOpt = "rating",
    rating_min: RatingMinOpt = None,
    rating_max: RatingMaxOpt = None,
    weight_col: WeightColOpt = None,
    impressions_col: ImpColOpt = None,
    clicks_col: ClicksColOpt = None,
    timestamp_col: TsColOpt = None,
    propensity_col: PropColOpt = None,
    user_features: UserFeatOpt = None,
    item_features: ItemFeatOpt = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Also check a split: random | temporal | leave-last-out"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random split.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Run every data check; exit 1 when any error is found (warnings alone exit 0)."""
    from wager.data.validate import validate_path

    schema = _table_schema(
        user_col,
        item_col,
        label_col,
        label_kind,
        rating_min,
        rating_max,
        weight_col,
        impressions_col,
        clicks_col,
        timestamp_col,
        propensity_col,
    )
    report = validate_path(
        path,
        fmt,
        schema,
        user_features_path=user_features,
        item_features_path=item_features,
        split=split,
        seed=seed,
    )
    if as_json:
        print_json(report.to_dict())
    else:
        render_report(report, console, err_console)
    if not report.ok:
        raise typer.Exit(code=1)


@data_app.command("download")
def data_download(
    name: Annotated[
        str, typer.Argument(help="movielens-100k | movielens-1m | movielens-latest-small")
    ],
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Where archives go (default: $WAGER_CACHE or ~/.cache/wager)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Fetch an official dataset archive, verify its SHA-256 and unpack it."""
    from wager.data.loaders.download import download

    target = download(name, cache_dir=cache_dir)
    if as_json:
        print_json({"ok": True, "name": name, "path": str(target)})
    else:
        console.print(
            Text.assemble(("downloaded", "green"), f" {name} -> {target}"), highlight=False
        )
