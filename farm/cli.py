"""The `farm` command line: a thin layer over farm's Python API.

Every user mistake ends as one line `farm: error: ...` (or one line per scene problem)
and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from farm import __version__
from farm.terminal import printable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """A bad argument: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other user error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parse_set(items: list[str] | None) -> dict[str, object]:
    """--set key=value pairs; values are YAML read as scene files are (farm.yamlio: safe,
    YAML 1.2 numbers, bounded)."""
    from farm.yamlio import YamlError, load_yaml

    overrides: dict[str, object] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        shown = item if len(item) <= 60 else f"{item[:56]}..."
        if not sep or not key.strip():
            raise UsageError(f"--set '{shown}': expected key=value")
        try:
            overrides[key.strip()] = load_yaml(text).data if text.strip() else ""
        except YamlError as error:
            hint = "; quote keyframes: --set 'zoom=\"0: (1)\"'" if ":" in text else ""
            raise UsageError(f"--set '{shown}': the value is not valid YAML ({error}){hint}") from None
    return overrides


def _parse_range(text: str | None, total: int) -> range:
    """--frames A:B (A inclusive, B exclusive), A:, :B or A, within 0 .. total-1."""
    if text is None:
        return range(total)
    if not text.strip():
        raise UsageError("--frames '': expected A:B (frame numbers)")
    start, sep, stop = text.partition(":")
    if not all(re.fullmatch(r"\s*-?[0-9]*\s*", part) for part in (start, stop)):  # int() takes "1_0" and "１"
        raise UsageError(f"--frames '{text}': expected A:B (frame numbers)")
    try:
        first = int(start) if start.strip() else 0
        last = int(stop) if sep and stop.strip() else (total if sep else first + 1)
    except ValueError:
        raise UsageError(f"--frames '{text}': expected A:B (frame numbers)") from None
    if first < 0:
        raise UsageError(f"--frames '{text}': expected 0 <= A < B")
    if first >= total:
        raise UsageError(f"--frames '{text}': selects nothing; the scene has {total} (0 to {total - 1})")
    if last <= first:
        raise UsageError(f"--frames '{text}': expected 0 <= A < B")
    return range(first, min(last, total))


# --------------------------------------------------------------------------- commands


MAX_PROBLEMS_SHOWN = 50


def _print_problems(problems) -> None:
    """One line per problem, the first MAX_PROBLEMS_SHOWN of a file (a generated file with
    50,000 unknown keys printed 50,000 lines), then how many more."""
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        print(printable(str(problem)), file=sys.stderr)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems", file=sys.stderr)


def cmd_validate(args) -> int:
    from farm.scene import SceneInvalid, load_scene

    status = EXIT_OK
    for path in args.scenes:
        try:
            scene = load_scene(path, overrides=_parse_set(args.set))
        except SceneInvalid as exc:
            _print_problems(exc.problems)
            status = EXIT_USAGE
            continue
        from farm.plan import resolve

        mode = scene["animation_mode"]
        try:
            count = len(resolve(scene, _video_frames(scene)).output_frames)
        except SceneInvalid as exc:  # a frame its settings cannot render (skips all its steps)
            _print_problems(exc.problems)
            status = EXIT_USAGE
            continue
        what = f"{count} images" if mode == "None" else f"{mode} animation, {count} frames"
        print(f"{printable(str(path))}: ok ({what})")
    return status


def _video_frames(scene) -> int | None:
    """Frames in a Video Input scene's video (probed once, when the scene was validated)."""
    if scene["animation_mode"] != "Video Input":
        return None
    from farm.inputs import count_video_frames

    return count_video_frames(scene["video_init_path"])


def _load_for_plan(args):
    from farm.scene import load_scene

    scene = load_scene(args.scene, overrides=_parse_set(getattr(args, "set", None)))
    return scene, _video_frames(scene)


def cmd_plan(args) -> int:
    from farm.plan import plan_record, resolve

    from farm.submit import input_digests

    scene, video_frames = _load_for_plan(args)
    plan = resolve(scene, video_frames, input_digests(scene))
    chosen = [plan.frames[i] for i in _parse_range(args.frames, len(plan.frames))]
    if args.json:
        json.dump(plan_record(plan, chosen), sys.stdout, indent=1)
        print()
        return EXIT_OK
    print(_plan_table(plan, chosen))
    return EXIT_OK


def _plan_table(plan, frames) -> str:
    animated = plan.is_animation
    header = ["frame" if animated else "image", "seed", "steps", "skip", "cgs", "tv", "range", "sat",
              "init_scale", "cutn_b", "init"]
    if animated:
        header += ["angle", "zoom", "tx", "ty", "tz", "rx", "ry", "rz"]
    header.append("prompts")
    rows = [header]
    for f in frames:
        g, s, m = f.render.guidance, f.render.sampler, f.motion
        init = f.init.kind + (f" {printable(Path(f.init.path).name)}" if f.init.path else "")
        if not f.diffuse:
            init += " (turbo)"
        row = [str(f.index), str(f.render.seed), str(s.steps), str(s.skip_steps), f"{g.clip_guidance_scale:g}",
               f"{g.tv_scale:g}", f"{g.range_scale:g}", f"{g.sat_scale:g}", f"{g.init_scale:g}", str(g.cutn_batches), init]
        if animated:
            row += [f"{v:.4g}" for v in (m.angle, m.zoom, m.translation_x, m.translation_y, m.translation_z,
                                         m.rotation_3d_x, m.rotation_3d_y, m.rotation_3d_z)]
        row.append(" | ".join(f"{printable(p.text[:40])}:{p.weight:g}" for p in f.render.text_prompts))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    mode = plan.animation.mode
    title = f"# {plan.name}: {'stills' if mode == 'None' else mode}, seed {plan.seed}, {len(plan.frames)} {'frames' if plan.is_animation else 'images'}"
    from farm.plan import sampler_steps

    compiled = plan.frames and plan.frames[0].render.models.compile_unet
    title += f", {sampler_steps(plan.frames)} sampler steps" + (", UNet compiled on CUDA GPUs" if compiled else "")
    return "\n".join([title, *lines])


def cmd_schema(args) -> int:
    from farm.schema import scene_schema

    json.dump(scene_schema(), sys.stdout, indent=1)
    print()
    return EXIT_OK


def cmd_import_dd(args) -> int:
    from farm.importdd import import_dd

    notes = import_dd(Path(args.settings), Path(args.output))
    for note in notes:
        print(f"farm: note: {note}", file=sys.stderr)
    print(f"wrote {args.output}")
    return EXIT_OK


_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:\d{1,3})?")


def _check_submit_args(args) -> list:
    """Everything wrong with the scene, its files or the arguments is found here, before
    farm.submit imports Ray and torch (seconds) or writes or starts anything."""
    from farm.output import OutputDamaged, OutputFolder
    from farm.plan import frame_count, resolve
    from farm.scene import load_scene
    from farm.storage import disk_path

    if args.actors is not None and args.actors < 1:
        raise UsageError(f"--actors {args.actors}: must be at least 1")
    if args.device is not None and not _DEVICE.fullmatch(args.device):
        raise UsageError(f"--device '{args.device}': expected cpu, cuda, cuda:N or mps")
    if args.out is not None and not args.out.strip():
        raise UsageError("--out '': expected a folder or a URI")
    from farm.remote import resolve_address

    remote = bool(not args.in_cluster and resolve_address(args.address))  # --out names a place on the cluster
    if args.out:
        _check_out(args, remote)
    if args.frames is not None and len(args.scenes) > 1:
        raise UsageError("--frames works with one scene at a time")
    named: dict[str, str] = {}
    scenes = []
    for path in args.scenes:
        scene = load_scene(path, overrides=_parse_set(args.set))
        video_frames = _video_frames(scene)
        scenes.append((path, scene, resolve(scene, video_frames)))  # SceneInvalid: a frame it cannot render
        if args.frames is not None:
            if scene.is_animation and scene["parallel_segments"] > 1:
                raise UsageError(f"--frames: {path} renders in {scene['parallel_segments']} parallel_segments, "
                                 "whose seams need renders from outside any range; submit the whole scene")
            _parse_range(args.frames, frame_count(scene, video_frames))
        out_folder = disk_path(args.out) if args.out and not remote else None  # a cluster's are on its machines
        if out_folder is not None:
            target = out_folder / scene["name"] if len(args.scenes) > 1 else out_folder
            if target.resolve() == Path(path).resolve().parent:
                raise UsageError(f"--out {args.out}: is the folder of {path} itself; a render writes scene.yaml, "
                                 "frames/ and video.mp4 there: give a new folder")
            folder = OutputFolder(target)
            try:
                folder.check_layout()  # the specific damage first (a file where frames/ belongs ...)
            except OutputDamaged as error:
                raise UsageError(str(error)) from None
            try:
                folder.check_is_render()
            except OutputDamaged as error:
                raise UsageError(f"--out {error}") from None
        if scene["name"] in named:  # their folders would be one: the later would overwrite the earlier
            raise UsageError(f"{path}: name '{scene['name']}' is also the name of {named[scene['name']]}; "
                             "scenes submitted together need different names (the name is the output folder)")
        named[scene["name"]] = path
    return scenes


def check_models_present(scenes: list) -> None:
    """A local render's checkpoints must be in the model cache (CLIP weights are open_clip's
    to find): missing ones are named, with the command that fetches them, before Ray starts.
    ``scenes``: (path, Scene) or (path, Scene, Plan) items."""
    from engine import catalogue

    from farm.plan import resolve

    known = catalogue.all_model_files()  # the built-in tiny models are not files
    for path, scene, *resolved in scenes:
        plan = resolved[0] if resolved else resolve(scene, _video_frames(scene))
        names = []
        if not scene["custom_path"] and scene["diffusion_model"] in known:
            names.append(scene["diffusion_model"])
        tiny = scene["diffusion_model"] == "tiny"
        if not tiny and scene["use_secondary_model"]:
            names.append(catalogue.SECONDARY_MODEL.name)
        if (scene["animation_mode"] == "Video Input" and scene["video_init_flow_warp"]
                and scene["video_flow_model"] == "raft" and not tiny):
            names.append(catalogue.RAFT.name)
        missing = []
        for name in names:
            try:
                catalogue.cached_path(name)
            except catalogue.ModelError:
                missing.append(name)
        # a frame guided toward an init (image, previous or video frame) uses LPIPS on VGG16
        if not tiny and any(f.render.guidance.init_scale and f.init.kind != "noise" for f in plan.frames):
            try:
                found = catalogue.vgg16_file()
            except catalogue.ModelError as error:
                raise UsageError(f"{path}: {error}") from None
            if found is None:
                missing.append(catalogue.VGG16.name)
        if scene["animation_mode"] == "3D" and not tiny and not _depth_model_available(scene["midas_depth_model"]):
            missing.append("dpt-large")
        if missing:
            what = f"model '{missing[0]}' is" if len(missing) == 1 else f"models {', '.join(missing)} are"
            raise UsageError(f"{path}: {what} not downloaded (looked in {catalogue.models_dir()}); "
                             f"fetch {'it' if len(missing) == 1 else 'them'} with: farm models download "
                             + " ".join(missing))


def _depth_model_available(name: str) -> bool:
    """Whether 3D's depth model can load: a folder in the model cache, Hugging Face's cache,
    or the hub itself (unless HF_HUB_OFFLINE says there is no network, as `make` sets)."""
    from farm.worker import depth_source

    source = depth_source(name)
    if Path(source).is_dir() or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("", "0", "false", "no"):
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(source, "config.json"), str)


def _resolvable(text: str, what: str) -> Path:
    """The path `text` (with ~ expanded); UsageError naming `what` if it cannot be resolved
    (a symlink loop: RuntimeError before Python 3.13)."""
    path = Path(text).expanduser()
    try:
        path.resolve()
    except (RuntimeError, OSError) as error:
        raise UsageError(f"{what}: cannot be resolved: {error}") from None
    return path


def _check_out(args, remote: bool) -> None:
    """--out: an existing path must be a folder; a URI must name a writable fsspec location
    whose backend is installed here (for a cluster job (`remote`), only its protocol is
    checked: the backend is needed where the job runs; and paths must be absolute)."""
    from farm.storage import OutputLocationError, check_uri, is_uri

    if remote and not is_uri(args.out) and not (args.out.startswith("~") or os.path.isabs(args.out)):
        raise UsageError(f"--out {args.out}: a relative path would be a folder inside the job's temporary "
                         "working directory on the cluster; give an absolute path (or ~/...) or a URI")
    if remote and args.out.lower().startswith("file://") and not args.out.lower().startswith("file:///"):
        raise UsageError(f"--out {args.out}: a relative file:// path would be inside the job's temporary "
                         "working directory on the cluster; write file:///absolute/path")
    if not is_uri(args.out):
        if remote:  # a path on the cluster's machines: nothing to check here
            return
        out = _resolvable(args.out, f"--out '{args.out}'")
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out '{args.out}': exists and is not a folder")
        return

    if not args.in_cluster and args.out.split("://", 1)[0].lower() == "memory":
        raise UsageError(f"--out {args.out}: memory:// lives only as long as this command (or the "
                         "cluster job it starts), so every frame would be lost when it ends; give a folder or a lasting URI (file://, s3://, ...)")
    try:
        check_uri(args.out, need_backend=not remote)
    except OutputLocationError as error:
        raise UsageError(f"--out {error}") from None


def cmd_preview(args) -> int:
    """preview.mp4 from the frames finished so far (a render may still be running)."""
    if args.fps is not None and not 0 < args.fps <= 1000:
        raise UsageError(f"--fps {args.fps:g}: expected frames per second above 0, at most 1000")
    from farm.output import OutputFolder

    _resolvable(args.dir, args.dir)
    folder = OutputFolder(args.dir)
    record = folder.read_plan()
    film = [f for f in record["frames"] if f.get("kind") != "segment"]  # segment renders are not frames
    entries = folder.finished({f["index"]: f["settings_hash"] for f in film})
    if not entries:
        raise UsageError(f"{args.dir}: no finished frames yet")
    from animation.video import stitch

    fps = args.fps if args.fps is not None else record.get("animation", {}).get("fps", 12)
    with folder.local_files([entries[i].file for i in sorted(entries)]) as frames, \
            folder.local_target("preview.mp4") as target:
        stitch(frames, target, fps=fps)
    print(f"preview ({len(entries)} of {len(film)} frames): {folder.url('preview.mp4')}")
    return EXIT_OK


def cmd_submit(args) -> int:
    scenes = _check_submit_args(args)
    from farm.remote import resolve_address, submit_remote
    from farm.submit import RayStartFailed, submit_local

    address = None if args.in_cluster else resolve_address(args.address)
    if address:
        return submit_remote(args, address)
    if args.detach:
        print("farm: --detach applies with --address (a cluster job); rendering here in the foreground",
              file=sys.stderr)
    if args.device and not args.in_cluster:
        check_device_present(args.device)
    check_models_present(scenes)
    try:
        return submit_local(args)
    except RayStartFailed as error:  # this machine's trouble, not the user's input: exit 1
        print(f"farm: error: {error}; nothing was rendered", file=sys.stderr)
        return EXIT_FAILED


def check_device_present(device: str) -> None:
    """--device names a device this machine has (else the actors failed to load their
    models after Ray had started)."""
    import torch

    kind, _, number = device.partition(":")
    index = int(number or 0)
    if kind == "cuda":
        count = torch.cuda.device_count()
        if index >= count:
            have = f"{count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA device"
            raise UsageError(f"--device {device}: this machine has {have}")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: this machine has no MPS device")
    elif kind == "xpu" and not (hasattr(torch, "xpu") and index < torch.xpu.device_count()):
        raise UsageError(f"--device {device}: this machine has no such XPU device")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="farm", description="Disco Farm: CLIP-guided diffusion art and animation on a Ray render farm.")
    parser.add_argument("--version", action="version", version=f"disco-farm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("validate", help="check scene files (exit 2 with one line per problem)")
    p.add_argument("scenes", nargs="+", metavar="SCENE")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("plan", help="show the resolved per-frame settings")
    p.add_argument("scene", metavar="SCENE")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--frames", metavar="A:B", help="only frames A (inclusive) to B (exclusive)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    p.set_defaults(run=cmd_plan)

    p = sub.add_parser("schema", help="print the JSON Schema of scene files (for editors)")
    p.set_defaults(run=cmd_schema)

    p = sub.add_parser("import-dd", help="convert a DD settings.txt into a scene file")
    p.add_argument("settings", metavar="SETTINGS.txt")
    p.add_argument("-o", "--output", required=True, metavar="SCENE.yaml")
    p.set_defaults(run=cmd_import_dd)

    p = sub.add_parser("preview", help="make preview.mp4 from the frames a render has finished so far")
    p.add_argument("dir", metavar="OUT_DIR", help="the render's output folder or URI")
    p.add_argument("--fps", type=float, default=None, help="frames per second (default: the scene's fps)")
    p.set_defaults(run=cmd_preview)

    p = sub.add_parser("submit", help="render scenes (embedded local Ray by default); several share the actors")
    p.add_argument("scenes", nargs="+", metavar="SCENE")
    p.add_argument("--out", metavar="DIR", help="output folder or fsspec URI such as s3://bucket/run "
                   "(default renders/<name>/<time>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--frames", metavar="A:B", help="only frames/images A to B")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--actors", type=int, default=None, help="render actors (default: one per GPU, else 1)")
    p.add_argument("--priority", type=int, default=None,
                   help="higher renders first when scenes share actors (default: the scene's priority, 0)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray)")
    p.add_argument("--address", help="Ray cluster (dashboard) address, e.g. http://127.0.0.1:8265; default $RAY_ADDRESS or a local Ray")
    p.add_argument("--detach", action="store_true", help="with --address: return after submitting")
    p.add_argument("--in-cluster", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=cmd_submit)

    from farm import remote

    for name, run, helptext in (
        ("status", remote.cmd_status, "a cluster job's state (or all jobs)"),
        ("logs", remote.cmd_logs, "a cluster job's log"),
        ("cancel", remote.cmd_cancel, "stop a cluster job (finished frames are kept)"),
        ("list", remote.cmd_list, "Disco Farm jobs on a cluster"),
        ("fetch", remote.cmd_fetch, "copy a cluster job's outputs to a folder"),
        ("queue", remote.cmd_queue, "the cluster's shared actor pool: actors, and jobs waiting in grant order"),
    ):
        p = sub.add_parser(name, help=helptext)
        if name in ("status",):
            p.add_argument("job", nargs="?", metavar="JOB")
        elif name == "fetch":
            p.add_argument("job", metavar="JOB", help="a cluster job, or the URI a render wrote to (s3://..., "
                           "gs://...; no cluster needed)")
        elif name not in ("list", "queue"):
            p.add_argument("job", metavar="JOB")
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        if name == "fetch":
            p.add_argument("dir", metavar="DIR")
        p.add_argument("--address", help="Ray dashboard address (default $RAY_ADDRESS)")
        p.set_defaults(run=run)

    from farm.models_cmd import register as register_models
    from farm.ui.command import register as register_ui

    register_models(sub)
    register_ui(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (also for argument errors, --help, --version)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (farm.submit), also while modules load
        submit = sys.modules.get("farm.submit")
        if submit is not None and submit.terminated:
            print("farm: terminated; finished outputs are kept", file=sys.stderr)
            return 143
        print("farm: interrupted; finished outputs are kept", file=sys.stderr)
        return 130


def _joined_negative_values(argv: list[str]) -> list[str]:
    """``--frames -1:3`` as ``--frames=-1:3``: argparse takes a value starting with '-' for an
    option and says only "expected one argument"; joined, the range check names the problem."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--frames", "--actors", "--priority") and re.fullmatch(r"-[0-9][0-9:]*", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _main(argv: list[str] | None) -> int:
    from farm.scene import SceneInvalid

    parser = build_parser()
    argv = _joined_negative_values(sys.argv[1:] if argv is None else list(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors (one line, 2), --help and --version (0)
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    command = getattr(args, "run", None) or getattr(args, "handler", None)
    if command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(command(args) or 0)
    except SceneInvalid as exc:
        _print_problems(exc.problems)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (`farm plan ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except (UsageError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"farm: error: {printable(message)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
