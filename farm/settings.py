"""The scene format as data: every setting, its type, default, DD name and meaning.

One table drives validation, `farm schema`, `farm import-dd` and the README. Names are
Disco Diffusion v5.7's unless ours read better, in which case DD's name is an alias.
"""

from __future__ import annotations

from dataclasses import dataclass

# Kinds of value a setting takes (checked in farm.scene):
#   number, int, bool, str, choice, keyframes (number or keyframe string), int_keyframes,
#   skip (int, "60%" or int keyframes), size ([w, h]), seed (int or "random"),
#   prompts ({frame: [..]} or a list), cuts (DD cut schedule string or number),
#   path, floats (list of numbers), steps_list (int or list of ints), clip_models,
#   ints (list of ints), auto_bool (true, false or "auto")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str
    default: object
    doc: str
    group: str = "image"
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


def _s(name, kind, default, doc, group="image", aliases=(), choices=(), minimum=None, maximum=None):
    return Setting(name, kind, default, doc, group, tuple(aliases), tuple(choices), minimum, maximum)


# Limits that keep a mistyped scene from asking for something absurd.
MAX_SIDE = 8192
MAX_STEPS = 10_000
MAX_FRAMES = 100_000
"""Frames in one animation, images in one still run (more takes seconds to plan: split it)."""
MAX_BATCHES = MAX_FRAMES
MAX_CUTS = 1024
"""Cuts of one kind per cut batch (DD's schedules use 4-16; every cut is a CLIP image)."""
MAX_NAME_LENGTH = 100
# No number in a scene means anything beyond this (1e308 is a typo, not a guidance scale;
# float32 on the GPU turns values past 3.4e38 into inf).
MAX_MAGNITUDE = 1e9

SETTINGS: tuple[Setting, ...] = (
    # --- the scene itself
    _s("name", "name", "scene", "Scene name: output folder and task names (one folder name: no / or \\, at most 100 characters).", "scene", aliases=("batch_name",)),
    _s("text_prompts", "prompts", {0: ["A beautiful painting of a singular lighthouse, shining its light across a tumultuous sea of blood by greg rutkowski and thomas kinkade, Trending on artstation.", "yellow color scheme"]},
       "Prompts by frame: {frame: ['text:weight', ...]}; the weight is the last ':number'.", "scene"),
    _s("image_prompts", "prompts", {}, "Image prompts by frame: {frame: ['path.png:weight', ...]}.", "scene"),
    _s("prompt_crossfade", "int", 0, "Frames over which a prompt switch cross-fades (0 = DD's hard switch).", "scene", minimum=0, maximum=MAX_FRAMES),
    _s("priority", "int", 0, "Render priority when scenes share actors (higher first; `--priority` overrides).", "scene", minimum=-1000, maximum=1000),
    _s("n_batches", "int", 50, "Number of still images (stills mode).", "scene", minimum=1, maximum=MAX_BATCHES),
    _s("images_per_call", "int", 1, "Stills: render this many images together, one UNet call per step for all (on an H200 the UNet's time per image is 0.69-0.77x at 4). Images are grouped by index (0-3, 4-7, ... for 4), so an image's pixels still depend only on the scene and its index; the group's memory grows with it.", "scene", minimum=1, maximum=64),
    _s("seed", "seed", "random", "Seed (int) or 'random' (chosen once, recorded in plan.json). Still i uses seed + i; frame f uses seed + f (Video Input: seed + f + 1, as DD; with video_init_seed_continuity every frame uses seed).", "scene", aliases=("set_seed",)),
    _s("width_height", "size", [1280, 768], "Image size [width, height], multiples of 64 (DD v5.7's width_height_for_512x512_models).", "scene", aliases=("width_height_for_512x512_models",)),
    _s("width_height_for_256x256_models", "size", [512, 448], "Image size with the 256 px models (256x256_diffusion_uncond, KaliYuga's): replaces width_height there, as in DD, unless only width_height is given.", "scene"),
    _s("display_rate", "int", 20, "Save a preview every N sampler steps (0 = none).", "scene", minimum=0, maximum=MAX_STEPS),
    _s("intermediate_saves", "steps_list", 0, "N evenly spaced intermediate saves, or a list of step indices counted from the first step run (as DD).", "scene"),
    _s("interpolation", "choice", "linear", "Keyframe in-betweens: linear (DD's default), quadratic or cubic (DD's splines, pinned at frame 0 and the last frame), or step.", "scene", aliases=("interp_spline",), choices=("linear", "cubic", "quadratic", "step")),
    # --- models
    _s("diffusion_model", "str", "512x512_diffusion_uncond_finetune_008100", "Diffusion UNet: a catalogue name, 'custom' (with custom_path), or 'tiny' (built-in random test model).", "models"),
    _s("custom_path", "path", None, "Checkpoint file for diffusion_model 'custom'.", "models"),
    _s("custom_model_settings", "mapping", {}, "UNet settings for a custom checkpoint (guided-diffusion names), over DD's defaults for custom models (KaliYuga's 256 px layout: attention at 16, 128 channels, 1 head, no scale-shift norm).", "models"),
    _s("use_secondary_model", "bool", True, "Predict x0 with the small secondary model (no gradient through the UNet).", "models"),
    _s("diffusion_sampling_mode", "choice", "ddim", "Sampler: ddim or plms.", "models", choices=("ddim", "plms")),
    _s("clip_models", "clip_models", ["ViT-B-32::openai", "ViT-B-16::openai", "RN50::openai"], "CLIP models as open_clip 'name::pretrained' (DD's ViTB32/RN50... booleans also work).", "models"),
    _s("use_checkpoint", "bool", False, "Gradient checkpointing in the UNet (saves memory, costs time; DD's default is on, here off: no effect on pixels).", "models"),
    _s("compile_unet", "auto_bool", "auto", "torch.compile the UNet on CUDA GPUs: true, false or auto (compile when the scene has at least 4000 sampler steps to run). Compiling takes 1-2 minutes per actor and image size; steps then ran 1.4x faster (H200, DD defaults).", "models"),
    # --- guidance (keyframable)
    _s("steps", "int_keyframes", 250, "Sampler steps (at least 2: DD's ddim respacing of 1000 diffusion steps has no 1-step form).", "guidance", minimum=2, maximum=MAX_STEPS),
    _s("skip_steps", "int_keyframes", 10, "Steps skipped at the start (init image strength).", "guidance", minimum=0, maximum=MAX_STEPS),
    _s("clip_guidance_scale", "keyframes", 5000, "Strength of CLIP guidance.", "guidance", minimum=0),
    _s("tv_scale", "keyframes", 0, "Total-variation (smoothness) loss scale.", "guidance", minimum=0),
    _s("range_scale", "keyframes", 150, "Out-of-range pixel loss scale (as in DD v5.7, it has no effect: DD's range loss is taken on the model's prediction, which the guidance gradient does not reach).", "guidance", minimum=0),
    _s("sat_scale", "keyframes", 0, "Saturation loss scale.", "guidance", minimum=0),
    _s("cutn_batches", "int_keyframes", 4, "Cut batches per step.", "guidance", minimum=1, maximum=64),
    _s("skip_augs", "bool", False, "Skip cutout augmentations.", "guidance"),
    _s("init_image", "path", None, "Initial image (path inside the scene's folder).", "guidance"),
    _s("init_scale", "keyframes", 1000, "Perceptual (LPIPS) loss scale against the init image.", "guidance", minimum=0),
    _s("eta", "keyframes", 0.8, "DDIM eta (0 deterministic, 1 DDPM-like).", "guidance", minimum=0, maximum=1),
    _s("clamp_grad", "bool", True, "Clamp the guidance gradient.", "guidance"),
    _s("clamp_max", "keyframes", 0.05, "Gradient clamp value (> 0; clamp_grad false turns clamping off).", "guidance", minimum=0),
    _s("clip_denoised", "bool", False, "Clip the denoised prediction to [-1, 1].", "guidance"),
    _s("fuzzy_prompt", "bool", False, "Add random noise to prompt embeddings.", "guidance"),
    _s("rand_mag", "keyframes", 0.05, "Magnitude of fuzzy_prompt noise.", "guidance", minimum=0),
    _s("randomize_class", "bool", True, "Randomise the class label (no effect on unconditional models).", "guidance"),
    _s("perlin_init", "bool", False, "Start from Perlin noise instead of Gaussian noise.", "guidance"),
    _s("perlin_mode", "choice", "mixed", "Perlin init colours.", "guidance", choices=("mixed", "color", "gray")),
    _s("cut_overview", "cuts", "[12]*400+[4]*600", "Overview cuts per virtual step (1000 slots).", "guidance", minimum=0, maximum=MAX_CUTS),
    _s("cut_innercut", "cuts", "[4]*400+[12]*600", "Inner cuts per virtual step.", "guidance", minimum=0, maximum=MAX_CUTS),
    _s("cut_ic_pow", "cuts", "[1]*1000", "Inner cut size power per virtual step.", "guidance", minimum=0, maximum=100),
    _s("cut_icgray_p", "cuts", "[0.2]*400+[0]*600", "Grayscale probability of inner cuts per virtual step.", "guidance", minimum=0, maximum=1),
    # DD's schedules for KaliYuga's fine-tunes: they replace the cut_* ones with those models
    # (unless the scene gives cut_* itself: DD's settings files record the schedules it used)
    _s("pad_or_pulp_cut_overview", "cuts", "[15]*100+[15]*100+[12]*100+[12]*100+[6]*100+[4]*100+[2]*200+[0]*200", "cut_overview with the pixel-art and PulpSciFi models.", "guidance", minimum=0, maximum=MAX_CUTS),
    _s("pad_or_pulp_cut_innercut", "cuts", "[1]*100+[1]*100+[4]*100+[4]*100+[8]*100+[8]*100+[10]*200+[10]*200", "cut_innercut with the pixel-art and PulpSciFi models.", "guidance", minimum=0, maximum=MAX_CUTS),
    _s("pad_or_pulp_cut_ic_pow", "cuts", "[12]*300+[12]*100+[12]*50+[12]*50+[10]*100+[10]*100+[10]*300", "cut_ic_pow with the pixel-art and PulpSciFi models.", "guidance", minimum=0, maximum=100),
    _s("pad_or_pulp_cut_icgray_p", "cuts", "[0.87]*100+[0.78]*50+[0.73]*50+[0.64]*60+[0.56]*40+[0.50]*50+[0.33]*100+[0.19]*150+[0]*400", "cut_icgray_p with the pixel-art and PulpSciFi models.", "guidance", minimum=0, maximum=1),
    _s("watercolor_cut_overview", "cuts", "[14]*200+[12]*200+[4]*400+[0]*200", "cut_overview with the watercolor models.", "guidance", minimum=0, maximum=MAX_CUTS),
    _s("watercolor_cut_innercut", "cuts", "[2]*200+[4]*200+[12]*400+[12]*200", "cut_innercut with the watercolor models.", "guidance", minimum=0, maximum=MAX_CUTS),
    _s("watercolor_cut_ic_pow", "cuts", "[12]*300+[12]*100+[12]*50+[12]*50+[10]*100+[10]*100+[10]*300", "cut_ic_pow with the watercolor models.", "guidance", minimum=0, maximum=100),
    _s("watercolor_cut_icgray_p", "cuts", "[0.7]*100+[0.6]*100+[0.45]*100+[0.3]*100+[0]*600", "cut_icgray_p with the watercolor models.", "guidance", minimum=0, maximum=1),
    _s("use_horizontal_symmetry", "bool", False, "Mirror left-right once at each fraction of the run in transformation_percent (DD: DDIM only; here PLMS too).", "guidance"),
    _s("use_vertical_symmetry", "bool", False, "Mirror top-bottom once at each fraction of the run in transformation_percent (DD: DDIM only; here PLMS too).", "guidance"),
    _s("transformation_percent", "floats", [0.09], "Fractions of the run at which symmetry is applied.", "guidance"),
    # --- animation
    _s("animation_mode", "choice", "None", "None (stills), 2D, 3D or Video Input.", "animation", choices=("None", "2D", "3D", "Video Input")),
    _s("max_frames", "int", 10000, "Frames to render in an animation.", "animation", minimum=1, maximum=MAX_FRAMES),
    _s("key_frames", "bool", True, "Keyframe strings are always understood; false requires plain numbers.", "animation"),
    _s("angle", "keyframes", "0:(0)", "2D rotation per frame, degrees.", "animation"),
    _s("zoom", "keyframes", "0: (1), 10: (1.05)", "2D zoom per frame.", "animation", minimum=0.01),
    _s("translation_x", "keyframes", "0: (0)", "X translation per frame (2D: pixels; 3D: DD units).", "animation"),
    _s("translation_y", "keyframes", "0: (0)", "Y translation per frame.", "animation"),
    _s("translation_z", "keyframes", "0: (10.0)", "Z translation per frame (3D).", "animation"),
    _s("rotation_3d_x", "keyframes", "0: (0)", "3D rotation about x per frame, degrees.", "animation"),
    _s("rotation_3d_y", "keyframes", "0: (0)", "3D rotation about y per frame, degrees.", "animation"),
    _s("rotation_3d_z", "keyframes", "0: (0)", "3D rotation about z per frame, degrees.", "animation"),
    _s("midas_depth_model", "choice", "dpt_large", "Depth model for 3D (DPT-Large through transformers; `farm models download dpt-large`).", "animation", choices=("dpt_large",)),
    _s("midas_weight", "number", 0.3, "Weight of the MiDaS depth in DD's blend with AdaBins depth. AdaBins is not available here: depth is MiDaS alone (as DD with midas_weight 1), whatever this says; accepted so DD's settings load.", "animation", minimum=0, maximum=1),
    _s("near_plane", "number", 200, "3D camera near plane.", "animation", minimum=0),
    _s("far_plane", "number", 10000, "3D camera far plane.", "animation", minimum=0),
    _s("fov", "number", 40, "3D camera field of view, degrees.", "animation", minimum=1, maximum=179),
    _s("padding_mode", "choice", "border", "3D resampling border: border, reflection or zeros.", "animation", choices=("border", "reflection", "zeros")),
    _s("sampling_mode", "choice", "bicubic", "Resampling filter.", "animation", choices=("bicubic", "bilinear", "nearest")),
    _s("camera_model", "choice", "dd", "3D camera: dd moves content as DD's transform_image_3d (each pixel's grid position at its depth, one-step offsets: near content moves faster, vertical like horizontal; the motion DD keyframes were tuned to); pinhole is a true pinhole camera with fov across the width, near content covering far.", "animation", choices=("dd", "pinhole")),
    _s("border_mode", "choice", "wrap", "2D warp border: wrap (DD), replicate or reflect.", "animation", choices=("wrap", "replicate", "reflect")),
    _s("frames_scale", "keyframes", 1500, "init_scale for animation frames after the first.", "animation", minimum=0),
    _s("frames_skip_steps", "skip", "60%", "skip_steps for animation frames after the first: '60%' of steps (as DD), a number of steps, or a keyframe string of steps.", "animation"),
    _s("turbo_mode", "bool", False, "Diffuse only every turbo_steps-th frame; blend the frames between; diffused frames are written blended 1/turbo_steps over where they started, as DD (DD: 3D only, here 2D too).", "animation"),
    _s("turbo_steps", "int", 3, "Turbo cadence.", "animation", minimum=2, maximum=1000),
    _s("turbo_preroll", "int", 10, "Frames diffused normally before turbo starts.", "animation", minimum=0, maximum=MAX_FRAMES),
    _s("color_coherence", "choice", "none", "Match each frame's colours to its shot's first frame (Deforum's colour coherence; not in DD): none, LAB, HSV or RGB.", "animation", choices=("none", "LAB", "HSV", "RGB")),
    _s("save_depth_maps", "bool", False, "Save 3D depth maps next to the frames.", "animation"),
    _s("cuts", "ints", [], "Frames where a new shot starts (the chain restarts).", "animation"),
    _s("parallel_segments", "int", 1, "Render an animation as K segments in parallel (cross-faded at the seams).", "animation", minimum=1, maximum=1024),
    _s("segment_overlap", "int", 0, "Frames of overlap between parallel segments.", "animation", minimum=0, maximum=MAX_FRAMES),
    # --- video input
    _s("video_init_path", "path", None, "Input video for Video Input mode.", "video"),
    _s("extract_nth_frame", "int", 2, "Use every n-th frame of the input video.", "video", minimum=1, maximum=10000),
    _s("video_init_seed_continuity", "bool", False, "Use the same seed for every frame of a Video Input run.", "video"),
    _s("video_init_flow_warp", "bool", True, "Warp the previous output by the video's optical flow.", "video"),
    _s("video_init_flow_blend", "number", 0.999, "Blend of the flow-warped output (1) against the video frame (0).", "video", minimum=0, maximum=1),
    _s("video_flow_model", "choice", "raft", "Optical flow of Video Input's flow warp: raft (as DD: RAFT with the raft-things weights, on the render's GPU; `farm models download raft_large_C_T_V1`) or dis (OpenCV's DIS: no model, fast on a CPU, rougher).", "video", choices=("raft", "dis")),
    _s("video_init_check_consistency", "bool", False, "Take the video frame where the flow is unreliable (forward-backward check), in the flow warp and in the output video's optical-flow blend. DD v5.7 has the setting but does nothing with it, hence off by default.", "video"),
    _s("video_init_blend_mode", "choice", "optical flow", "Video Input: how the output video mixes each frame with the one before, by video_blend: none, linear, or optical flow (the frame before moved along the input video's motion first; DD's create-video blend_mode).", "video", choices=("none", "linear", "optical flow")),
    _s("video_init_steps", "int_keyframes", 100, "steps in Video Input mode (at least 2).", "video", minimum=2, maximum=MAX_STEPS),
    _s("video_init_clip_guidance_scale", "keyframes", 1000, "clip_guidance_scale in Video Input mode.", "video", minimum=0),
    _s("video_init_tv_scale", "keyframes", 0.1, "tv_scale in Video Input mode.", "video", minimum=0),
    _s("video_init_range_scale", "keyframes", 150, "range_scale in Video Input mode.", "video", minimum=0),
    _s("video_init_sat_scale", "keyframes", 300, "sat_scale in Video Input mode.", "video", minimum=0),
    _s("video_init_cutn_batches", "int_keyframes", 4, "cutn_batches in Video Input mode.", "video", minimum=1, maximum=64),
    _s("video_init_skip_steps", "int_keyframes", 50, "skip_steps in Video Input mode.", "video", minimum=0, maximum=MAX_STEPS),
    _s("video_init_frames_scale", "keyframes", 15000, "frames_scale in Video Input mode.", "video", minimum=0),
    _s("video_init_frames_skip_steps", "skip", "70%", "frames_skip_steps in Video Input mode.", "video"),
    # --- output video
    _s("fps", "number", 12, "Frames per second of the output video (also 's' in expressions).", "output", minimum=0.1, maximum=240),
    _s("video_crf", "int", 17, "H.264 quality (lower is better).", "output", minimum=0, maximum=51),
    _s("video_format", "choice", "mp4", "Output video format.", "output", choices=("mp4", "webm", "gif")),
    _s("video_blend", "number", 0.0, "Blend between consecutive frames in the video (0..1; DD's create-video cell used 0.5, here 0: no blend).", "output", aliases=("blend",), minimum=0, maximum=1),
)

# DD's CLIP checkboxes -> open_clip "name::pretrained".
DD_CLIP_FLAGS: dict[str, str] = {
    "ViTB32": "ViT-B-32::openai",
    "ViTB16": "ViT-B-16::openai",
    "ViTL14": "ViT-L-14::openai",
    "ViTL14_336px": "ViT-L-14-336::openai",
    "RN101": "RN101::openai",
    "RN50": "RN50::openai",
    "RN50x4": "RN50x4::openai",
    "RN50x16": "RN50x16::openai",
    "RN50x64": "RN50x64::openai",
    "ViTB32_laion2b_e16": "ViT-B-32::laion2b_e16",
    "ViTB32_laion400m_e31": "ViT-B-32::laion400m_e31",
    "ViTB32_laion400m_32": "ViT-B-32::laion400m_e32",
    "ViTB32quickgelu_laion400m_e31": "ViT-B-32-quickgelu::laion400m_e31",
    "ViTB32quickgelu_laion400m_e32": "ViT-B-32-quickgelu::laion400m_e32",
    "ViTB16_laion400m_e31": "ViT-B-16::laion400m_e31",
    "ViTB16_laion400m_e32": "ViT-B-16::laion400m_e32",
    "RN50_yffcc15m": "RN50::yfcc15m",
    "RN50_cc12m": "RN50::cc12m",
    "RN50_quickgelu_yfcc15m": "RN50-quickgelu::yfcc15m",
    "RN50_quickgelu_cc12m": "RN50-quickgelu::cc12m",
    "RN101_yfcc15m": "RN101::yfcc15m",
    "RN101_quickgelu_yfcc15m": "RN101-quickgelu::yfcc15m",
}
DD_CLIP_DEFAULT_ON = ("ViTB32", "ViTB16", "RN50")

# DD settings accepted for compatibility but with no effect here (value is ignored).
IGNORED: dict[str, str] = {
    "diffusion_steps": "derived from steps, as DD does: (1000 // steps) * steps",
    "width": "use width_height (import-dd converts it)",
    "height": "use width_height (import-dd converts it)",
    "useCPU": "the farm picks devices itself",
    "intermediates_in_subfolder": "previews always go to previews/",
    "skip_video_for_run_all": "the video is always made for animations",
    "persistent_frame_output_in_batch_folder": "outputs always go to the output folder",
    "partial_folder": "previews always go to previews/",
    "steps_per_checkpoint": "use intermediate_saves",
    "batch_size": "one image per task",
    "view_video_in_cell": "no notebook here",
    "check_model_SHA": "checksums are always verified on download (`farm models verify` checks the cache)",
}

# DD settings we deliberately do not support, with the reason.
UNSUPPORTED: dict[str, str] = {
    "vr_mode": "VR (two-eye) rendering is not supported",
    "vr_eye_angle": "VR (two-eye) rendering is not supported",
    "vr_ipd": "VR (two-eye) rendering is not supported",
    "resume_run": "resume is automatic: submit again with the same --out",
    "run_to_resume": "resume is automatic: submit again with the same --out",
    "resume_from_frame": "resume is automatic: submit again with the same --out",
    "retain_overwritten_frames": "resume is automatic: finished frames are kept",
    "use_adabins": "AdaBins depth is not supported: 3D uses MiDaS DPT only",
    "midas_model_type": "use midas_depth_model",
    "blend_mode": "use video_init_blend_mode (with video_blend for DD's blend)",
    "angle_series": "use angle (keyframes)",
}

# Keyframable settings whose per-frame values the plan resolves.
KEYFRAMABLE = tuple(s.name for s in SETTINGS if s.kind in ("keyframes", "int_keyframes"))

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
ALIASES: dict[str, str] = {alias: s.name for s in SETTINGS for alias in s.aliases}


def canonical_name(key: str) -> str | None:
    """Our name for a scene key (itself or an alias), or None if unknown."""
    if key in BY_NAME:
        return key
    return ALIASES.get(key)


def all_known_names() -> list[str]:
    """Every key a scene may contain (for did-you-mean)."""
    return sorted({*BY_NAME, *ALIASES, *DD_CLIP_FLAGS, *IGNORED, *UNSUPPORTED})
