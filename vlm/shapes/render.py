"""Drawing the moving-shapes clips: the attribute records, each object's state per frame, the per-clip
noise background, and antialiased frames.

A clip is fully described by a :class:`ClipAttributes` (JSON-able): :func:`render_clip` turns it into
uint8 frames ``[T, S, S, 3]`` with nothing random left (the background comes from its own seed).

Geometry, in pixels of the ``S x S`` frame, x to the right and y DOWN (image coordinates):

* every object is anchored at the clip's middle frame ``m = T // 2`` (the frame a single-frame
  baseline sees): ``position`` is its centre there, ``radius`` its circumradius there, ``angle`` its
  orientation there (degrees, clockwise on screen);
* at frame ``t`` with ``dt = t - m``: ``left``/``right`` move the centre by ``-/+ speed * dt`` in x,
  ``up``/``down`` by ``-/+ speed * dt`` in y (``speed`` in pixels per frame); ``growing`` scales the
  radius by ``speed ** dt`` and ``shrinking`` by ``speed ** -dt`` (``speed`` = scale factor per
  frame, > 1); ``rotating`` turns by ``speed * dt`` degrees (clockwise) or ``-speed * dt``
  (counterclockwise); ``still`` keeps everything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

# Saturated, well-separated colours that stay apart after H.264's 4:2:0 chroma subsampling, on a
# grey-ish background (see `render_background`). Every name is one SmolLM2 token after a space.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 190, 45),
    "blue": (40, 80, 250),
    "yellow": (250, 230, 30),
    "purple": (160, 40, 220),
    "white": (245, 245, 245),
    "orange": (255, 135, 0),
    "cyan": (0, 215, 230),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "growing", "shrinking", "rotating", "still")
TRANSLATIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
ROTATION_DIRECTIONS: tuple[str, ...] = ("clockwise", "counterclockwise")
# Shapes whose rotation cannot be seen: never sampled with the motion "rotating".
ROTATION_INVARIANT_SHAPES: frozenset[str] = frozenset({"circle"})

SUPERSAMPLING = 4  # masks are drawn at 4x the frame size, then box-filtered: antialiased edges


# ---------------------------------------------------------------------------------------------
# Attribute records
# ---------------------------------------------------------------------------------------------


@dataclass
class ObjectAttributes:
    """One object of a clip; positions and radii in pixels, angles in degrees (see module docstring)."""

    shape: str
    colour: str
    size: str  # "small" | "large": the size class of `radius` (the middle-frame circumradius)
    radius: float
    position: tuple[float, float]  # centre (x, y) at the middle frame
    angle: float  # orientation at the middle frame, degrees clockwise
    motion: str
    speed: float  # px/frame (translations), scale factor/frame (growing, shrinking), deg/frame (rotating), 0 (still)
    rotation: str | None = None  # "clockwise" | "counterclockwise" when motion == "rotating"
    start_position: tuple[float, float] = (0.0, 0.0)  # centre at frame 0 (derived, for readers)
    end_position: tuple[float, float] = (0.0, 0.0)  # centre at the last frame (derived)
    start_radius: float = 0.0  # circumradius at frame 0 (derived)
    end_radius: float = 0.0  # circumradius at the last frame (derived)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.colour not in PALETTE:
            raise ValueError(f"unknown colour {self.colour!r}; known: {', '.join(PALETTE)}")
        if self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; known: {', '.join(MOTIONS)}")
        if self.motion == "rotating" and self.rotation not in ROTATION_DIRECTIONS:
            raise ValueError(f"a rotating object needs rotation in {ROTATION_DIRECTIONS}, got {self.rotation!r}")
        if self.motion in ("growing", "shrinking") and not self.speed > 1.0:
            raise ValueError(f"{self.motion} needs a scale factor per frame > 1, got {self.speed}")
        if not self.radius > 0:
            raise ValueError(f"radius must be positive, got {self.radius}")
        self.position = (float(self.position[0]), float(self.position[1]))
        self.start_position = (float(self.start_position[0]), float(self.start_position[1]))
        self.end_position = (float(self.end_position[0]), float(self.end_position[1]))


@dataclass
class ClipAttributes:
    """Everything about one clip: enough to render it exactly, and to ask and answer about it."""

    id: str
    split: str
    num_frames: int
    frame_size: int
    fps: int
    background_seed: int
    motion: str  # shared by all objects of the clip
    objects: list[ObjectAttributes] = field(default_factory=list)
    video: str = ""  # path of the mp4, relative to the corpus folder

    @property
    def middle_frame(self) -> int:
        """The anchor frame ``T // 2`` (the frame a single-frame baseline sees)."""
        return self.num_frames // 2

    @property
    def count(self) -> int:
        return len(self.objects)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["count"] = self.count
        values["middle_frame"] = self.middle_frame
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ClipAttributes":
        values = dict(values)
        values.pop("count", None)
        values.pop("middle_frame", None)
        objects = [o if isinstance(o, ObjectAttributes) else ObjectAttributes(**o) for o in values.pop("objects")]
        return cls(objects=objects, **values)


@dataclass(frozen=True)
class ObjectState:
    """An object's pose at one frame: centre (x, y), circumradius and angle (degrees clockwise)."""

    x: float
    y: float
    radius: float
    angle: float


def object_state(obj: ObjectAttributes, frame: int, middle_frame: int) -> ObjectState:
    """The pose of ``obj`` at frame index ``frame`` (see the module docstring for the motions)."""
    dt = frame - middle_frame
    x, y = obj.position
    radius, angle = obj.radius, obj.angle
    if obj.motion in TRANSLATIONS:
        dx, dy = TRANSLATIONS[obj.motion]
        x, y = x + dx * obj.speed * dt, y + dy * obj.speed * dt
    elif obj.motion == "growing":
        radius = obj.radius * obj.speed**dt
    elif obj.motion == "shrinking":
        radius = obj.radius * obj.speed ** (-dt)
    elif obj.motion == "rotating":
        angle = obj.angle + (1 if obj.rotation == "clockwise" else -1) * obj.speed * dt
    return ObjectState(x, y, radius, angle)


def with_derived_fields(obj: ObjectAttributes, num_frames: int) -> ObjectAttributes:
    """``obj`` with start/end position and radius filled in from its motion."""
    first, last = object_state(obj, 0, num_frames // 2), object_state(obj, num_frames - 1, num_frames // 2)
    obj.start_position, obj.end_position = (first.x, first.y), (last.x, last.y)
    obj.start_radius, obj.end_radius = first.radius, last.radius
    return obj


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def _area_centroid(polygon: np.ndarray) -> np.ndarray:
    """Centroid of the area of a simple polygon ``[V, 2]`` (shoelace formula). -> ``[2]``"""
    x, y = polygon[:, 0], polygon[:, 1]
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    cross = x * y_next - x_next * y
    area = cross.sum() / 2
    return np.array([((x + x_next) * cross).sum(), ((y + y_next) * cross).sum()]) / (6 * area)


def _unit_outline(shape: str) -> np.ndarray:
    """Polygon ``[V, 2]`` of ``shape`` centred at 0 with circumradius 1, angle 0 (y down)."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "square":
        t = np.deg2rad(45 + 90 * np.arange(4))
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "triangle":  # apex up
        t = np.deg2rad(-90 + 120 * np.arange(3))
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "star":  # five points, inner radius 0.45
        t = np.deg2rad(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "cross":  # a plus sign, arm half-width 0.32
        a, b = 0.32, 1.0
        points = [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
        outline = np.array(points, dtype=np.float64)
        return outline / np.hypot(a, b)
    if shape == "heart":  # the classic parametric heart, point down, centred on its area centroid
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        outline = np.stack([x, y], axis=1)
        outline -= _area_centroid(outline)  # so that a rotating heart turns in place
        return outline / np.hypot(outline[:, 0], outline[:, 1]).max()
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


_OUTLINES = {shape: _unit_outline(shape) for shape in SHAPES}


def shape_outline(shape: str, state: ObjectState) -> np.ndarray:
    """Polygon ``[V, 2]`` (x, y pixels) of ``shape`` at pose ``state``."""
    theta = math.radians(state.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    unit = _OUTLINES[shape] if shape in _OUTLINES else _unit_outline(shape)
    rotated = unit @ np.array([[cos, sin], [-sin, cos]])  # clockwise on screen for y down
    return rotated * state.radius + np.array([state.x, state.y])


def coverage_mask(shape: str, state: ObjectState, frame_size: int) -> np.ndarray:
    """Fraction of each pixel the object covers: float32 ``[S, S]`` in [0, 1] (antialiased)."""
    big = frame_size * SUPERSAMPLING
    image = Image.new("L", (big, big), 0)
    # Pixel centres: pixel i covers [i, i + 1) in frame units, so supersampled coordinates are scaled.
    outline = shape_outline(shape, state) * SUPERSAMPLING
    ImageDraw.Draw(image).polygon([tuple(p) for p in outline.tolist()], fill=255)
    small = image.resize((frame_size, frame_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# Background and frames
# ---------------------------------------------------------------------------------------------


def render_background(background_seed: int, frame_size: int) -> np.ndarray:
    """The clip's static noise texture: float32 ``[S, S, 3]`` in [0, 255].

    Low-saturation grey (mean luminance 70-130) with smooth blobs (+-~25) and fine grain (~8 per
    pixel, partly per channel), so that the saturated object colours stay recognisable.
    """
    rng = np.random.default_rng(background_seed)
    base = rng.uniform(70.0, 130.0)
    tint = rng.uniform(-8.0, 8.0, size=3)
    coarse = rng.normal(size=(5, 5)).astype(np.float32)
    blobs = np.asarray(
        Image.fromarray(coarse, mode="F").resize((frame_size, frame_size), Image.Resampling.BICUBIC), dtype=np.float32
    )
    blobs = blobs / max(float(np.abs(blobs).max()), 1e-6) * 25.0
    grain = rng.normal(0.0, 6.0, size=(frame_size, frame_size, 1)) + rng.normal(
        0.0, 3.0, size=(frame_size, frame_size, 3)
    )
    background = base + tint + blobs[..., None] + grain
    return np.clip(background, 0.0, 255.0).astype(np.float32)


def render_clip(attributes: ClipAttributes | dict, return_masks: bool = False):
    """Draw a clip.

    attributes: a :class:`ClipAttributes` or its ``to_dict()`` form.
    Returns uint8 frames ``[T, S, S, 3]`` (RGB); with ``return_masks`` also each object's coverage
    float32 ``[T, K, S, S]`` (K = number of objects, in drawing order; later objects are drawn over
    earlier ones, the coverage is each object's own, before occlusion).
    """
    if isinstance(attributes, dict):
        attributes = ClipAttributes.from_dict(attributes)
    size, frames_count = attributes.frame_size, attributes.num_frames
    background = render_background(attributes.background_seed, size)
    frames = np.empty((frames_count, size, size, 3), dtype=np.uint8)
    masks = np.zeros((frames_count, len(attributes.objects), size, size), dtype=np.float32)
    for t in range(frames_count):
        frame = background.copy()
        for k, obj in enumerate(attributes.objects):
            alpha = coverage_mask(obj.shape, object_state(obj, t, attributes.middle_frame), size)
            masks[t, k] = alpha
            colour = np.asarray(PALETTE[obj.colour], dtype=np.float32)
            frame = frame * (1.0 - alpha[..., None]) + colour * alpha[..., None]
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return (frames, masks) if return_masks else frames
