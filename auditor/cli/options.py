"""The options of the ``audit`` commands, each defined once: the commands that share an option
use the same alias (same flag, help, type and default; ``tests/test_cli.py`` compares their
``--help``), and :func:`scan_options` maps the shared ones to the scan's keyword arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

BackboneOpt = Annotated[
    str | None,
    typer.Option(help="efficientnet-lite0 (default, offline), a keras.applications name (ResNet50, ...), "
                 "or a .keras model file."),
]  # fmt: skip


WeightsOpt = Annotated[
    str | None, typer.Option(help="For keras.applications backbones: imagenet (downloads once), none, or a file.")
]


LayerOpt = Annotated[str | None, typer.Option(help="For a .keras backbone: the feature layer [default: the "
                                              "input of the last layer].")]  # fmt: skip


PreprocessOpt = Annotated[
    str, typer.Option(help="For a .keras backbone: raw (0..255), unit (0..1), tf (-1..1), torch or caffe.")
]


BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per inference batch.")]


CacheDirOpt = Annotated[Path | None, typer.Option(help="Cache folder [default: ~/.cache/image-auditor].")]


WorkersOpt = Annotated[
    int | None, typer.Option("--workers", "-j", min=1, help="Worker processes [default: CPU count].")
]


def _engine(value: str) -> str:
    if value not in ("local", "ray"):
        raise typer.BadParameter(f"{value!r} is not one of local, ray.")
    return value


EngineOpt = Annotated[
    str,
    typer.Option(callback=_engine, metavar="local|ray",
                 help="Where the per-image work runs: local (worker processes here) or ray (a Ray cluster: "
                 "$RAY_ADDRESS, else a local instance, of --workers CPUs if given; needs pip install "
                 "'image-auditor[ray]'). Same outputs either way."),
]  # fmt: skip


LayoutOpt = Annotated[str, typer.Option(help="auto, class-folders, split-folders, manifest, flat, coco or yolo.")]


CocoOpt = Annotated[Path | None, typer.Option(help="COCO instances JSON (detection) [default: instances_*.json].")]


ImagesOpt = Annotated[Path | None, typer.Option(help="Folder the COCO file_name paths are relative to.")]


ManifestOpt = Annotated[
    Path | None, typer.Option(help="CSV with columns path,label[,split], paths relative to DATASET.")
]


SourceOpt = Annotated[
    Path | None,
    typer.Option(
        help="A source-like reference set to compare the dataset with (domain shift): a folder, "
        "or a CSV manifest (path,label[,split]) whose paths are relative to its folder."
    ),
]


SourceLayoutOpt = Annotated[str, typer.Option(help="Layout of --source (as --layout).")]


SourceManifestOpt = Annotated[Path | None, typer.Option(help="CSV manifest of --source.")]


NoProjectionOpt = Annotated[
    bool, typer.Option("--no-projection", help="Skip the 2-D UMAP map of the compared sets (saves seconds).")
]


NoEmbedOpt = Annotated[bool, typer.Option("--no-embed", help="Skip the backbone embeddings (no TensorFlow).")]


RulesOpt = Annotated[str | None, typer.Option(help="Rules file, or a preset: default, strict, lenient.")]


NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the cache.")]


FollowSymlinksOpt = Annotated[bool, typer.Option(help="Follow symbolic links that leave the dataset folder.")]


MaxPixelsOpt = Annotated[int | None, typer.Option(help="Refuse images larger than this many pixels [default: 100M].")]


# fine-tuning (audit finetune, audit run)
EpochsOpt = Annotated[int, typer.Option(min=1, help="Epochs per phase (early stopping may end sooner).")]


UnfreezeOpt = Annotated[int, typer.Option(min=0, help="Top blocks trained in phase 2 (0: head only).")]


LearningRateOpt = Annotated[float, typer.Option(min=0.0, help="Phase 1 learning rate; phase 2 uses a tenth.")]


ImageSizeOpt = Annotated[int, typer.Option(min=32, help="Input size in pixels.")]


AugmentOpt = Annotated[bool, typer.Option("--augment/--no-augment", help="Keras augmentation layers.")]


SeedOpt = Annotated[int, typer.Option(help="Random seed.")]


def _positive_minutes(value: float | None) -> float | None:
    if value is not None and not (0 < value < float("inf")):
        raise typer.BadParameter(f"{value} is not a positive number of minutes.")
    return value


TuneOpt = Annotated[
    bool,
    typer.Option("--tune/--no-tune", help="Search learning rate, L2, dropout and unfrozen blocks first (KerasTuner: "
                 "head trials on the backbone's features, then short fine-tuning trials of the best heads), "
                 "then train with the winner."),
]  # fmt: skip


TrialsOpt = Annotated[
    int | None, typer.Option(min=1, help="With --tune: head settings tried [default: 8] (the best 2 then get a "
                             "short fine-tuning trial per unfreeze choice: --unfreeze and twice it).")
]  # fmt: skip


BudgetOpt = Annotated[
    float | None,
    typer.Option(callback=_positive_minutes, metavar="MINUTES",
                 help="With --tune: stop searching after this many minutes (the trial running then ends "
                 "after its current epoch) [default: no limit]."),
]  # fmt: skip


#: The options every command that scans takes, each defined once above (a test compares the
#: --help of scan, gate and run on them).
SHARED_SCAN_OPTIONS = (
    "--no-embed", "--backbone", "--weights", "--layer", "--preprocess", "--batch-size", "--workers", "--engine",
    "--layout", "--manifest", "--coco", "--images", "--source", "--source-layout", "--source-manifest",
    "--no-projection", "--rules", "--cache-dir", "--no-cache", "--follow-symlinks", "--max-pixels",
)  # fmt: skip


def scan_options(params: dict) -> dict:
    """The options of :data:`auditor.pipeline.scan.SCAN_OPTIONS` from a command's parameters
    (its ``locals()``): the shared options, negated flags turned round."""
    from auditor.pipeline.scan import SCAN_OPTIONS

    negated = {"embed": "no_embed", "projection": "no_projection"}
    return {k: (not params[negated[k]]) if k in negated else params[k] for k in SCAN_OPTIONS}
