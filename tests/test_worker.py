"""End to end without Ray: 2D, 3D and Video Input animations with tiny models, each
frame's init checked to be the warped previous frame (or the flow-warped output)."""

from types import SimpleNamespace

import numpy as np
import pytest

from farm.plan import resolve
from farm.scene import parse_scene
from farm.worker import FrameInputs, FrameRenderer
from tests.conftest import TINY_SCENE

BASE = "\n".join(l for l in TINY_SCENE.splitlines() if not l.startswith(("steps", "skip_steps"))) + "\n"
# 4 steps (2 for frames after the first, frames_skip_steps 50%) and one cut of each kind:
# every check below compares a frame's init with its warped (or flow-warped) source, which
# holds whatever the frame's own diffusion did
FAST = BASE + ('steps: 4\nskip_steps: 0\ncutn_batches: 1\ncut_overview: "[1]*1000"\ncut_innercut: "[1]*1000"\n'
               'init_scale: 0\nframes_scale: 0\nframes_skip_steps: "50%"\nmax_frames: 3\n')


@pytest.fixture(scope="module")
def renderer():
    """One torch thread (as the farm's test actors): on a busy 2-core machine a second
    thread spins while it waits for the first, burning ten to twenty times a frame's CPU
    time; the number the rest of this process had comes back afterwards."""
    import torch

    threads = torch.get_num_threads()
    plan = resolve(parse_scene(FAST))
    yield FrameRenderer(plan.frames[0].render.models, device="cpu", threads=1)
    torch.set_num_threads(threads)


def render_chain(renderer, plan, video=None, chains=None, depths=None):
    """Each frame's written pixels and init; later frames start from `chains` (a turbo
    frame's unblended image, else its pixels), filled in when a list is given, as are
    `depths` (each frame's saved depth map)."""
    outputs, inits, sources = [], [], []
    for frame in plan.frames:
        needs = plan.dependencies(frame)
        pixel = lambda i: sources[i] if i is not None else None  # noqa: E731
        inputs = FrameInputs(
            previous=pixel(needs.previous), reference=pixel(needs.reference),
            previous_motions=needs.previous_motions, older=pixel(needs.older), older_motions=needs.older_motions,
            video_previous=video[frame.previous] if video is not None and frame.previous is not None else None,
            video_current=video[frame.index] if video is not None else None)
        result = renderer.render(frame, plan.animation, inputs)
        outputs.append(result.pixels)
        inits.append(result.init)
        sources.append(result.chain if result.chain is not None else result.pixels)
        if depths is not None:
            depths.append(result.depth)
    if chains is not None:
        chains.extend(sources)
    return outputs, inits


def test_2d_frames_start_from_the_warped_previous_frame(renderer):
    from animation.warp2d import warp_2d

    plan = resolve(parse_scene(FAST + 'animation_mode: 2D\nzoom: "0:(1.1)"\nangle: "0:(5)"\ntranslation_x: "0:(4)"\n'))
    outputs, inits = render_chain(renderer, plan)
    assert inits[0] is None
    for f in (1, 2):
        expected = warp_2d(outputs[f - 1], plan.frames[f].motion, border="wrap", sampling="bilinear")
        assert np.array_equal(inits[f], expected)
        assert not np.array_equal(outputs[f], inits[f])  # and it was diffused


def test_3d_frames_start_from_the_depth_warped_previous_frame(renderer):
    from animation.warp3d import warp_3d

    plan = resolve(parse_scene(FAST + 'animation_mode: 3D\ntranslation_z: "0:(20)"\nrotation_3d_y: "0:(2)"\n'))
    outputs, inits = render_chain(renderer, plan)
    depth = renderer.depth_model("dpt_large")
    assert depth.is_random  # tiny models come with the tiny random depth model
    for f in (1, 2):
        expected = warp_3d(outputs[f - 1], depth.predict(outputs[f - 1]), plan.frames[f].motion,
                           near_plane=200, far_plane=10000, fov=40, padding_mode="border", sampling_mode="bicubic")
        assert np.array_equal(inits[f], expected)


@pytest.mark.parametrize("flow_model", ["raft", "dis"])
def test_video_input_frames_start_from_the_flow_warped_output(renderer, tmp_path, flow_model):
    """The video's motion by RAFT (as DD; random weights with tiny models) or DIS."""
    from animation.flow import RaftFlow, flow_init, optical_flow
    from farm.worker import TINY_RAFT_SEED

    (tmp_path / "in.mp4").write_bytes(b"x")
    scene = parse_scene(FAST + "animation_mode: Video Input\nvideo_init_path: in.mp4\nextract_nth_frame: 1\n"
                        + f"video_init_steps: 4\nvideo_init_skip_steps: 2\nvideo_flow_model: {flow_model}\n",
                        base_dir=tmp_path)
    plan = resolve(scene, video_frames=3)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    video = [np.ascontiguousarray(base[:, 2 * i:2 * i + 64]) for i in range(3)]
    outputs, inits = render_chain(renderer, plan, video)
    assert np.array_equal(inits[0], video[0])
    flow = RaftFlow.random(seed=TINY_RAFT_SEED) if flow_model == "raft" else optical_flow
    for f in (1, 2):
        expected = flow_init(outputs[f - 1], video[f - 1], video[f], blend=0.999, use_mask=False, flow=flow)
        assert np.array_equal(inits[f], expected)


def test_turbo_skipped_frames_blend_two_warped_chains_like_dd(renderer):
    from animation.turbo import turbo_blend
    from animation.warp2d import warp_2d

    plan = resolve(parse_scene(FAST.replace("max_frames: 3", "max_frames: 7")
                               + 'animation_mode: 2D\nzoom: "0:(1.05)"\nangle: "0:(3)"\n'
                               + "turbo_mode: true\nturbo_steps: 3\nturbo_preroll: 2\n"))
    assert [f.diffuse for f in plan.frames] == [True, True, True, True, False, False, True]  # DD's schedule
    chains = []
    outputs, inits = render_chain(renderer, plan, chains=chains)

    def warp(image, frames):
        for f in frames:
            image = warp_2d(image, plan.frames[f].motion, border="wrap", sampling="bilinear")
        return image

    # frame 5: newer chain from diffused frame 3 (warped by 4 and 5), older from frame 2 (warped by 3, 4, 5)
    expected = turbo_blend(warp(chains[2], (3, 4, 5)), warp(chains[3], (4, 5)), 5, 3)
    assert np.array_equal(outputs[5], expected) and np.array_equal(inits[5], expected)
    # the next diffused frame continues the newer chain, not the blended frame
    assert np.array_equal(inits[6], warp(chains[3], (4, 5, 6)))


def test_turbo_writes_diffused_frames_blended_over_where_they_started_as_dd(renderer):
    """DD's 3D turbo writes a diffused frame after the first as 1/turbo_steps of its new
    image over the warped frame it started from; the chain continues from the new image."""
    from animation.turbo import turbo_saved_frame

    plan = resolve(parse_scene(FAST.replace("max_frames: 3", "max_frames: 4")
                               + 'animation_mode: 3D\ntranslation_z: "0:(20)"\n'
                               + "turbo_mode: true\nturbo_steps: 2\nturbo_preroll: 1\n"))
    assert [f.diffuse for f in plan.frames] == [True, True, True, False]
    chains, depths = [], []
    outputs, inits = render_chain(renderer, plan, chains=chains, depths=depths)
    assert np.array_equal(outputs[0], chains[0])  # the first frame is written as rendered
    for f in (1, 2):
        assert not np.array_equal(outputs[f], chains[f])
        assert np.array_equal(outputs[f], turbo_saved_frame(chains[f], inits[f], 2))
    depth = renderer.depth_model("dpt_large")
    from animation.warp3d import warp_3d

    expected = warp_3d(chains[1], depth.predict(chains[1]), plan.frames[2].motion, near_plane=200,
                       far_plane=10000, fov=40, padding_mode="border", sampling_mode="bicubic")
    assert np.array_equal(inits[2], expected)  # made from frame 1's chain image, not its written blend
    # frame 3 (not diffused) blends the newer chain (frame 2 warped) and the older one
    # (frame 1 warped twice): its depth map is the newer chain's, of frame 2's chain image
    assert np.array_equal(depths[3], depth.predict(chains[2]))


@pytest.mark.parametrize("mode", ["optical flow", "linear", "none"])
def test_the_video_blends_video_input_frames_as_video_init_blend_mode_says(tmp_path, mode):
    """DD's create-video blend: 'optical flow' moves the frame before along the input
    video's motion before mixing it in by video_blend; 'linear' mixes it as it is; 'none'
    leaves the frames alone."""
    import cv2

    from animation.flow import flow_blend_frames
    from animation.video import blend_consecutive
    from farm.driver import JobInputs, make_video
    from farm.output import OutputFolder

    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (64, 112, 3), dtype=np.uint8), (0, 0), 2)
    video = [np.ascontiguousarray(texture[:, 6 * i:6 * i + 64]) for i in range(3)]  # the camera pans
    outputs = [np.clip(v.astype(int) + 40 * i, 0, 255).astype(np.uint8) for i, v in enumerate(video)]
    frames_dir = tmp_path / "out" / ".video-frames"
    frames_dir.mkdir(parents=True)
    for i, frame in enumerate(video):
        cv2.imwrite(str(frames_dir / f"{i:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (tmp_path / "in.mp4").write_bytes(b"x")
    scene = parse_scene(FAST + "animation_mode: Video Input\nvideo_init_path: in.mp4\nextract_nth_frame: 1\n"
                        f"video_blend: 0.5\nvideo_init_blend_mode: {mode}\nvideo_crf: 0\n", base_dir=tmp_path)
    plan = resolve(scene, video_frames=3)
    folder = OutputFolder(tmp_path / "out")
    entries = {}
    for frame, pixels in zip(plan.frames, outputs):
        file, _ = folder.write_frame("frame", frame.index, pixels)
        entries[frame.index] = SimpleNamespace(file=file)  # make_video reads the file name only
    make_video(folder, plan, entries, inputs=JobInputs(video_frames_dir=frames_dir))
    decoded = []
    capture = cv2.VideoCapture(str(tmp_path / "out" / "video.mp4"))
    while True:
        ok, image = capture.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(int))
    assert len(decoded) == 3
    expected = {"optical flow": flow_blend_frames(outputs[1], outputs[2], video[1], video[2], 0.5, use_mask=False),
                "linear": blend_consecutive(outputs[1], outputs[2], 0.5), "none": outputs[2]}
    errors = {name: np.abs(decoded[2] - image.astype(int)).mean() for name, image in expected.items()}
    assert min(errors, key=errors.get) == mode and errors[mode] < 3, errors
