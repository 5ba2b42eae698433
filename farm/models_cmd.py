"""``farm models``: list, download and verify the model checkpoints in the local cache.

    farm models list [--dir DIR]
    farm models download NAME... [--dir DIR] [--quiet]     (NAME may be ``all`` or a CLIP name)
    farm models verify [NAME...] [--dir DIR]

Catalogue files go to ``--dir`` or ``engine.catalogue.models_dir()``. CLIP weights named
like ``ViT-B-32::openai`` are pre-fetched through open_clip into open_clip's own cache.
Every handler takes the parsed arguments and returns the process exit code.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from engine import catalogue
from engine.catalogue import (
    TINY_MODEL_PREFIX,
    ModelError,
    ModelFile,
    UnknownModel,
    all_model_files,
    lookup_model_file,
    models_dir,
    parse_clip_name,
)
from engine.download import DownloadError, download, file_state, part_path, verify

__all__ = ["register", "cmd_list", "cmd_download", "cmd_verify", "format_size"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``models`` and its subcommands; each sets ``handler(args) -> int``."""
    parser = subparsers.add_parser(
        "models",
        help="list, download and verify model checkpoints",
        description="Manage the local cache of diffusion, secondary and CLIP model weights.",
    )
    parser.set_defaults(handler=lambda args: _print_help(parser))
    commands = parser.add_subparsers(dest="models_command", metavar="COMMAND")

    listing = commands.add_parser("list", help="show catalogue models and whether they are cached")
    _add_dir_option(listing)
    listing.set_defaults(handler=cmd_list)

    fetch = commands.add_parser(
        "download",
        help="download models into the cache (resumable, sha256-verified)",
        description="Download catalogue models (or 'all') into the cache; CLIP names such as "
        "ViT-B-32::openai are pre-fetched into open_clip's own cache.",
    )
    fetch.add_argument("names", nargs="+", metavar="NAME", help="catalogue name, 'all', or CLIP name")
    _add_dir_option(fetch)
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.set_defaults(handler=cmd_download)

    check = commands.add_parser("verify", help="hash cached files against the catalogue sha256")
    check.add_argument("names", nargs="*", metavar="NAME", help="catalogue names (default: all cached)")
    _add_dir_option(check)
    check.set_defaults(handler=cmd_verify)
    return parser


def _add_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=pathlib.Path,
        default=None,
        help="model folder (default: $DISCO_FARM_MODELS or ~/.cache/disco-farm/models)",
    )


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _error(message: str) -> None:
    print(f"farm: error: {message}", file=sys.stderr)


def _model_folder(args: argparse.Namespace, must_exist: bool) -> pathlib.Path | None:
    """The model folder (--dir, else the default); None after saying what is wrong with
    --dir (a file, or, where it is only read, missing: every model looked 'missing') or
    with the default ($DISCO_FARM_MODELS with a '~user' that does not expand; where it is
    only read, something that is not a folder, such as /dev/null)."""
    if args.dir is None:
        try:
            folder = models_dir()
        except ModelError as exc:
            _error(str(exc))
            return None
        if must_exist and folder.exists() and not folder.is_dir():
            explicit = os.environ.get("DISCO_FARM_MODELS")
            _error(f"DISCO_FARM_MODELS={explicit}: is not a folder" if explicit
                   else f"model folder {folder}: is not a folder")
            return None
        return folder
    if args.dir.exists() and not args.dir.is_dir():
        _error(f"--dir {args.dir}: is not a folder")
        return None
    if must_exist and not args.dir.exists():
        _error(f"--dir {args.dir}: no such folder")
        return None
    return args.dir


def format_size(num_bytes: int | None) -> str:
    """``2200000000`` -> ``"2.0 GiB"``; None -> ``"?"``."""
    if num_bytes is None:
        return "?"
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _kind(model: ModelFile) -> str:
    entry = catalogue.DIFFUSION_MODELS.get(model.name)
    if entry is not None:
        return f"diffusion {entry.image_size}px"
    if model.name == catalogue.SECONDARY_MODEL.name:
        return "secondary"
    return {catalogue.VGG16.name: "lpips vgg16", catalogue.RAFT.name: "video flow"}.get(model.name, "other")


def cmd_list(args: argparse.Namespace) -> int:
    """Print name, kind, size and state of every catalogue file (no hashing)."""
    folder = _model_folder(args, must_exist=True)
    if folder is None:
        return EXIT_USAGE
    rows = []
    for model in all_model_files().values():
        state = file_state(model, folder)
        path = folder / model.filename
        if path.is_file():
            size = format_size(path.stat().st_size)
        elif state == "partial":
            size = format_size(part_path(model, folder).stat().st_size) + " so far"
        else:
            size = ("~" + format_size(model.size_hint)) if model.size_hint else "?"
        rows.append((model.name, _kind(model), size, state))
    for name in DEPTH_MODELS:  # a folder of transformers files (3D's depth), not one checkpoint
        files = [f for f in (folder / name).rglob("*") if f.is_file()] if (folder / name).is_dir() else []
        state = "downloaded" if (folder / name / "config.json").is_file() else "missing"
        rows.append((name, "depth (3D)", format_size(sum(f.stat().st_size for f in files)) if files else "?", state))
    header = ("NAME", "KIND", "SIZE", "STATE")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"models folder: {folder}")
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print("CLIP weights are cached by open_clip; fetch them with: farm models download ViT-B-32::openai")
    return EXIT_OK


# Depth models for 3D mode: cache folder name -> transformers hub id.
DEPTH_MODELS = {"dpt-large": "Intel/dpt-large"}
DEPTH_ALIASES = {"dpt_large": "dpt-large", "Intel/dpt-large": "dpt-large"}


def _resolve_download_targets(names: list[str]) -> list[ModelFile | tuple[str, str]]:
    """Catalogue files, ``(arch, tag)`` CLIP pairs and ``("depth", name)``, in order, no duplicates."""
    targets: list[ModelFile | tuple[str, str]] = []
    for name in names:
        if name == "all":
            found = list(all_model_files().values())
        elif DEPTH_ALIASES.get(name, name) in DEPTH_MODELS:
            found = [("depth", DEPTH_ALIASES.get(name, name))]
        else:
            try:
                found = [lookup_model_file(name)]
            except UnknownModel as catalogue_error:
                if "::" not in name and not _looks_like_clip(name):
                    raise catalogue_error
                found = [parse_clip_name(name)]
        targets.extend(item for item in found if item not in targets)
    return targets


def _looks_like_clip(name: str) -> bool:
    try:
        parse_clip_name(name)
    except ModelError:
        return False
    return True


def _prefetch_clip(arch: str, tag: str) -> str:
    """Download CLIP weights through open_clip; return where they are."""
    if arch.startswith(TINY_MODEL_PREFIX):
        return "built-in test model, nothing to download"
    if pathlib.Path(tag).is_file():
        return f"local weights file {tag}"
    import open_clip.pretrained as clip_pretrained

    cfg = clip_pretrained.get_pretrained_cfg(arch, tag)
    try:
        path = clip_pretrained.download_pretrained(cfg)
    except Exception as error:  # open_clip/huggingface_hub raise many kinds; report one line
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DownloadError(f"could not fetch CLIP {arch}::{tag} through open_clip: {first_line}") from error
    if not path:
        raise DownloadError(f"open_clip has no download source for CLIP {arch}::{tag}")
    return str(path)


def _fetch_depth(name: str, folder: pathlib.Path) -> str:
    """Fetch a DPT depth model through transformers into the model cache (folder/name)."""
    target = pathlib.Path(folder) / name
    if (target / "config.json").is_file():
        return f"{target} (already cached)"
    try:
        from transformers import DPTForDepthEstimation

        network = DPTForDepthEstimation.from_pretrained(DEPTH_MODELS[name])
    except Exception as error:  # hub, network and format errors: report one line
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DownloadError(f"could not fetch depth model {name} ({DEPTH_MODELS[name]}): {first_line}") from error
    partial = target.with_name(f".{name}.partial")
    network.save_pretrained(partial)
    partial.replace(target)
    return str(target)


def cmd_download(args: argparse.Namespace) -> int:
    """Download each named model; 2 for an unknown name, 1 if any download failed."""
    try:
        targets = _resolve_download_targets(list(args.names))
    except ModelError as error:
        _error(str(error))
        return EXIT_USAGE
    folder = _model_folder(args, must_exist=False)
    if folder is None:
        return EXIT_USAGE
    failed = 0
    for target in targets:
        try:
            if isinstance(target, ModelFile):
                path = download(target, folder, progress=not args.quiet)
                print(f"{target.name}: {path}")
            elif target[0] == "depth":
                print(f"{target[1]}: {_fetch_depth(target[1], folder)}")
            else:
                where = _prefetch_clip(*target)
                print(f"{target[0]}::{target[1]}: {where}")
        except ModelError as error:
            _error(str(error))
            failed += 1
    return EXIT_FAILED if failed else EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Hash cached files; 1 on any mismatch (or a named model that is missing)."""
    folder = _model_folder(args, must_exist=True)
    if folder is None:
        return EXIT_USAGE
    try:
        models = [lookup_model_file(name) for name in args.names] if args.names else list(all_model_files().values())
    except ModelError as error:
        _error(f"{error} (verify checks catalogue files; CLIP weights are checked by open_clip)")
        return EXIT_USAGE
    bad = 0
    for model in models:
        result = verify(model, folder)
        if result is None:
            print(f"{model.name}: missing")
            bad += bool(args.names)
        elif result:
            print(f"{model.name}: ok")
        else:
            print(f"{model.name}: MISMATCH (sha256 differs from catalogue; re-download with: "
                  f"farm models download {model.name})")
            bad += 1
    return EXIT_FAILED if bad else EXIT_OK
