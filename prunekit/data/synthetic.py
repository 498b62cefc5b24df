"""Procedural indoor scenes: the embedded default dataset, generated on the fly.

Each sample is a camera inside a box-shaped room (floor, four walls, ceiling) holding a few boxes
(beds, chairs, sofas, tables, cabinets, a wall-mounted TV, books) and spheres ("objects"), with
paintings and windows on the walls. One vectorised ray cast per pixel gives the nearest surface,
from which RGB, the 13-class NYUv2 label, depth and the surface normal all follow, so the three
tasks describe one geometry and are genuinely related. Samples are deterministic in
(seed, split, index); nothing is read from disk or downloaded.

Conventions (those of the usual NYUv2 preprocessing):
- ``image``: float32 [3, H, W], RGB in [0, 1].
- ``seg``: int64 [H, W], classes 0..12 (``NYU13_CLASSES``); 255 marks unlabelled pixels, here a
  share of the pixels on object boundaries, as hand annotation leaves them.
- ``depth``: float32 [1, H, W], z-depth in metres; 0 where the sensor has no reading (windows).
- ``normal``: float32 [3, H, W], unit normals in the camera frame (x right, y down, z forward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

NYU13_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
                 "painting", "sofa", "table", "tv", "wall", "window")
CLASS_ID = {name: i for i, name in enumerate(NYU13_CLASSES)}
IGNORE_INDEX = 255

# Base albedo of each class (RGB); every instance is jittered around it.
CLASS_COLOURS = {
    "bed": (0.85, 0.75, 0.70), "books": (0.70, 0.20, 0.20), "ceiling": (0.92, 0.92, 0.88),
    "chair": (0.45, 0.30, 0.20), "floor": (0.60, 0.45, 0.30), "furniture": (0.55, 0.40, 0.28),
    "objects": (0.30, 0.55, 0.75), "painting": (0.60, 0.50, 0.40), "sofa": (0.35, 0.40, 0.55),
    "table": (0.65, 0.50, 0.35), "tv": (0.08, 0.08, 0.10), "wall": (0.80, 0.78, 0.72),
    "window": (0.85, 0.92, 1.00),
}

# Furniture on the floor: class, size ranges (width, height, depth) in metres.
FLOOR_BOXES = (
    ("bed", (1.4, 2.0), (0.45, 0.65), (1.9, 2.1)),
    ("chair", (0.40, 0.55), (0.8, 1.0), (0.40, 0.55)),
    ("sofa", (1.6, 2.2), (0.7, 0.9), (0.8, 1.0)),
    ("table", (0.8, 1.6), (0.70, 0.80), (0.6, 1.0)),
    ("furniture", (0.6, 1.2), (0.8, 2.0), (0.4, 0.6)),
)
HORIZONTAL_FOV = math.radians(60.0)
EPS = 1e-4


@dataclass
class Box:
    label: str
    low: tuple[float, float, float]
    high: tuple[float, float, float]
    colour: tuple[float, float, float]


@dataclass
class Sphere:
    label: str
    centre: tuple[float, float, float]
    radius: float
    colour: tuple[float, float, float]


@dataclass
class Decal:
    """A rectangle painted on a wall: ``axis`` 0 (x) or 2 (z), ``side`` 0 (low) or 1 (high)."""
    label: str
    axis: int
    side: int
    u: tuple[float, float]
    v: tuple[float, float]
    colour: tuple[float, float, float]


@dataclass
class Scene:
    room: tuple[float, float, float]
    boxes: list[Box]
    spheres: list[Sphere]
    decals: list[Decal]
    eye: torch.Tensor          # [3]
    rotation: torch.Tensor     # [3, 3], columns: camera right, down, forward in world coordinates
    light: torch.Tensor        # [3], unit direction towards the light


class SceneSampler:
    """Draws one random room layout."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def colour(self, label: str, jitter: float = 0.08) -> tuple[float, float, float]:
        base = CLASS_COLOURS[label]
        return tuple(min(1.0, max(0.0, c + self.uniform(-jitter, jitter))) for c in base)

    def scene(self) -> Scene:
        room = (self.uniform(3.5, 6.0), self.uniform(2.4, 3.0), self.uniform(4.0, 6.5))
        eye, rotation = self.camera(room)
        boxes = self.floor_boxes(room, eye)
        boxes += self.tabletop_books(boxes)
        tv = self.wall_tv(room)
        if tv is not None:
            boxes.append(tv)
        spheres = self.spheres(room, boxes, eye)
        decals = self.decals(room)
        elevation = self.uniform(math.radians(35), math.radians(75))
        azimuth = self.uniform(0.0, 2 * math.pi)
        light = torch.tensor([math.cos(elevation) * math.cos(azimuth), math.sin(elevation),
                              math.cos(elevation) * math.sin(azimuth)])
        return Scene(room, boxes, spheres, decals, eye, rotation, light)

    def camera(self, room):
        width, height, depth = room
        eye = torch.tensor([self.uniform(0.3, 0.7) * width, self.uniform(1.1, 1.7),
                            self.uniform(0.3, 0.9)])
        yaw = self.uniform(-0.6, 0.6)
        pitch = self.uniform(-0.45, 0.05)
        forward = torch.tensor([math.sin(yaw) * math.cos(pitch), math.sin(pitch),
                                math.cos(yaw) * math.cos(pitch)])
        up = torch.tensor([0.0, 1.0, 0.0])
        right = torch.linalg.cross(up, forward)
        right = right / right.norm()
        down = torch.linalg.cross(right, forward)
        return eye, torch.stack([right, down, forward], dim=1)

    def floor_boxes(self, room, eye) -> list[Box]:
        width, _, depth = room
        boxes = []
        for _ in range(self.integer(2, 5)):
            label, sx, sy, sz = FLOOR_BOXES[self.integer(0, len(FLOOR_BOXES) - 1)]
            size = (self.uniform(*sx), self.uniform(*sy), self.uniform(*sz))
            if self.chance(0.5):  # rotate by 90 degrees about the vertical axis
                size = (size[2], size[1], size[0])
            x = self.uniform(0.05, max(0.06, width - size[0] - 0.05))
            # Keep furniture in front of the camera so it is seen rather than stood in.
            z_low = min(float(eye[2]) + 0.8, depth - size[2] - 0.05)
            z = self.uniform(z_low, max(z_low + 0.01, depth - size[2] - 0.05))
            boxes.append(Box(label, (x, 0.0, z), (x + size[0], size[1], z + size[2]),
                             self.colour(label)))
        return boxes

    def tabletop_books(self, boxes: list[Box]) -> list[Box]:
        books = []
        for box in boxes:
            if box.label not in ("table", "furniture") or not self.chance(0.6):
                continue
            w, d = self.uniform(0.15, 0.35), self.uniform(0.12, 0.25)
            h = self.uniform(0.05, 0.25)
            x = self.uniform(box.low[0], max(box.low[0] + 0.01, box.high[0] - w))
            z = self.uniform(box.low[2], max(box.low[2] + 0.01, box.high[2] - d))
            top = box.high[1]
            books.append(Box("books", (x, top, z), (x + w, top + h, z + d),
                             self.colour("books", jitter=0.25)))
        return books

    def wall_tv(self, room) -> Box | None:
        if not self.chance(0.4):
            return None
        width, _, depth = room
        w, h = self.uniform(0.8, 1.2), self.uniform(0.45, 0.7)
        x = self.uniform(0.1, width - w - 0.1)
        y = self.uniform(1.0, 1.5)
        return Box("tv", (x, y, depth - 0.08), (x + w, y + h, depth - 0.01), self.colour("tv", 0.03))

    def spheres(self, room, boxes, eye) -> list[Sphere]:
        width, _, depth = room
        spheres = []
        tops = [b for b in boxes if b.label in ("table", "furniture", "bed")]
        for _ in range(self.integer(1, 3)):
            radius = self.uniform(0.08, 0.3)
            if tops and self.chance(0.5):
                base = tops[self.integer(0, len(tops) - 1)]
                centre = (self.uniform(base.low[0], base.high[0]), base.high[1] + radius,
                          self.uniform(base.low[2], base.high[2]))
            else:
                centre = (self.uniform(radius, width - radius), radius,
                          self.uniform(float(eye[2]) + 0.6, depth - radius))
            spheres.append(Sphere("objects", centre, radius, self.colour("objects", jitter=0.3)))
        return spheres

    def decals(self, room) -> list[Decal]:
        width, height, depth = room
        decals = []
        for label, count, (h_low, h_high) in (("painting", self.integer(0, 2), (0.4, 0.9)),
                                              ("window", self.integer(0, 2), (0.9, 1.4))):
            for _ in range(count):
                axis, side = ((0, self.integer(0, 1)) if self.chance(0.5)
                              else (2, 1))  # side walls or the far wall, the ones in view
                span = depth if axis == 0 else width
                w = self.uniform(0.5, min(1.6, span - 0.4))
                u = self.uniform(0.2, span - w - 0.2)
                h = self.uniform(h_low, h_high)
                v = self.uniform(0.9, max(0.91, height - h - 0.2))
                colour = (self.colour("window", 0.05) if label == "window"
                          else tuple(self.uniform(0.1, 0.95) for _ in range(3)))
                decals.append(Decal(label, axis, side, (u, u + w), (v, v + h), colour))
        return decals


def camera_rays(height: int, width: int) -> torch.Tensor:
    """Unit ray directions in the camera frame (x right, y down, z forward): [H*W, 3]."""
    focal = (width / 2) / math.tan(HORIZONTAL_FOV / 2)
    ys = (torch.arange(height, dtype=torch.float32) + 0.5 - height / 2) / focal
    xs = (torch.arange(width, dtype=torch.float32) + 0.5 - width / 2) / focal
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    rays = torch.stack([x, y, torch.ones_like(x)], dim=-1).reshape(-1, 3)
    return rays / rays.norm(dim=-1, keepdim=True)


def safe_reciprocal(d: torch.Tensor) -> torch.Tensor:
    return 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)


def intersect_room(origin, directions, room):
    """Exit distance from inside the room, the inward normal and the hit axis per ray."""
    inv = safe_reciprocal(directions)
    far_plane = torch.where(directions > 0, torch.tensor(room), torch.zeros(3))
    t_axes = (far_plane - origin) * inv
    t, axis = t_axes.min(dim=1)
    normal = torch.zeros_like(directions)
    normal.scatter_(1, axis[:, None], -torch.sign(directions.gather(1, axis[:, None])))
    return t, normal, axis


def intersect_boxes(origin, directions, boxes: list[Box]):
    """Entry distance (inf on a miss) and outward normal for each box: [B, N], [B, N, 3]."""
    low = torch.tensor([b.low for b in boxes])[:, None, :]
    high = torch.tensor([b.high for b in boxes])[:, None, :]
    inv = safe_reciprocal(directions)[None]
    t1, t2 = (low - origin) * inv, (high - origin) * inv
    t_near, near_axis = torch.minimum(t1, t2).max(dim=2)
    t_far = torch.maximum(t1, t2).min(dim=2).values
    hit = (t_far >= t_near) & (t_near > EPS)
    t = torch.where(hit, t_near, torch.full_like(t_near, math.inf))
    normal = torch.zeros(len(boxes), directions.shape[0], 3)
    signs = -torch.sign(directions[None].expand(len(boxes), -1, -1).gather(2, near_axis[..., None]))
    normal.scatter_(2, near_axis[..., None], signs)
    return t, normal


def intersect_spheres(origin, directions, spheres: list[Sphere]):
    centres = torch.tensor([s.centre for s in spheres])[:, None, :]
    radii = torch.tensor([s.radius for s in spheres])[:, None]
    offset = origin - centres                                   # [S, 1, 3]
    b = (offset * directions[None]).sum(-1)                     # [S, N]
    c = (offset * offset).sum(-1) - radii ** 2
    disc = b * b - c
    t = -b - torch.sqrt(disc.clamp(min=0))
    hit = (disc >= 0) & (t > EPS)
    t = torch.where(hit, t, torch.full_like(t, math.inf))
    points = origin + t[..., None].clamp(max=1e3) * directions[None]
    normal = points - centres
    return t, normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-9)  # exact unit length


def texture(points: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Multiplicative surface pattern: wood planks on the floor, fine grain elsewhere."""
    planks = 0.9 + 0.1 * torch.sin(points[:, 0] * 14.0) * torch.sin(points[:, 2] * 3.0 + 1.0)
    pattern = torch.where(labels == CLASS_ID["floor"], planks, torch.ones_like(planks))
    return pattern * (1.0 + 0.06 * noise)


def render(scene: Scene, height: int, width: int, generator: torch.Generator) -> dict:
    rays_cam = camera_rays(height, width)
    directions = rays_cam @ scene.rotation.T
    origin = scene.eye[None]
    n = directions.shape[0]

    t, normal, axis = intersect_room(origin, directions, scene.room)
    labels = torch.full((n,), CLASS_ID["wall"], dtype=torch.long)
    labels[(axis == 1) & (directions[:, 1] < 0)] = CLASS_ID["floor"]
    labels[(axis == 1) & (directions[:, 1] > 0)] = CLASS_ID["ceiling"]
    colours = torch.tensor([CLASS_COLOURS[name] for name in NYU13_CLASSES])[labels]
    valid_depth = torch.ones(n, dtype=torch.bool)

    points = origin + t[:, None] * directions
    for decal in scene.decals:
        wall = scene.room[decal.axis] * decal.side
        u = points[:, 2 if decal.axis == 0 else 0]
        inside = ((axis == decal.axis) & ((points[:, decal.axis] - wall).abs() < 1e-3)
                  & (u >= decal.u[0]) & (u <= decal.u[1])
                  & (points[:, 1] >= decal.v[0]) & (points[:, 1] <= decal.v[1]))
        labels[inside] = CLASS_ID[decal.label]
        colours[inside] = torch.tensor(decal.colour)
        if decal.label == "window":
            valid_depth &= ~inside

    objects = [(scene.boxes, intersect_boxes), (scene.spheres, intersect_spheres)]
    for items, intersect in objects:
        if not items:
            continue
        t_obj, n_obj = intersect(origin, directions, items)
        nearest, which = t_obj.min(dim=0)
        closer = nearest < t
        t = torch.where(closer, nearest, t)
        picked = n_obj[which, torch.arange(n)]
        normal = torch.where(closer[:, None], picked, normal)
        item_labels = torch.tensor([CLASS_ID[o.label] for o in items])
        item_colours = torch.tensor([o.colour for o in items])
        labels = torch.where(closer, item_labels[which], labels)
        colours = torch.where(closer[:, None], item_colours[which], colours)
        valid_depth |= closer

    points = origin + t[:, None] * directions
    noise = torch.randn(n, generator=generator)
    shade = 0.45 + 0.55 * (normal @ scene.light).clamp(min=0)
    shade = torch.where(labels == CLASS_ID["window"], torch.ones_like(shade), shade)  # daylight
    rgb = colours * (shade * texture(points, labels, noise))[:, None]
    rgb = (rgb + 0.02 * torch.randn(n, 3, generator=generator)).clamp(0, 1)

    depth = t * rays_cam[:, 2]
    depth = torch.where(valid_depth, depth, torch.zeros_like(depth))
    normal_cam = normal @ scene.rotation  # world -> camera: R^T n, written row-wise

    labels = labels.reshape(height, width)
    labels = mark_unlabelled_boundaries(labels, generator)
    return {
        "image": rgb.T.reshape(3, height, width).contiguous(),
        "seg": labels,
        "depth": depth.reshape(1, height, width),
        "normal": normal_cam.T.reshape(3, height, width).contiguous(),
    }


def mark_unlabelled_boundaries(labels: torch.Tensor, generator: torch.Generator,
                               share: float = 0.5) -> torch.Tensor:
    """Leave a share of the pixels on class boundaries unlabelled, as NYUv2's annotation does."""
    boundary = torch.zeros_like(labels, dtype=torch.bool)
    boundary[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    boundary[1:, :] |= labels[1:, :] != labels[:-1, :]
    drop = boundary & (torch.rand(labels.shape, generator=generator) < share)
    return labels.masked_fill(drop, IGNORE_INDEX)


SPLIT_IDS = {"train": 0, "val": 1}


def sample_random_state(seed: int, split: str, index: int):
    """Independent streams for the layout (numpy) and the pixel noise (torch) of one sample."""
    sequence = np.random.SeedSequence([seed, SPLIT_IDS[split], index])
    layout_seed, noise_seed = sequence.generate_state(2)
    return np.random.default_rng(layout_seed), torch.Generator().manual_seed(int(noise_seed))


class SyntheticIndoorScenes(Dataset):
    """Deterministic procedural indoor scenes with seg / depth / normal targets."""

    num_classes = len(NYU13_CLASSES)
    class_names = NYU13_CLASSES
    tasks = ("seg", "depth", "normal")  # the targets it renders (build_tasks checks --tasks)

    def __init__(self, split: str = "train", size: tuple[int, int] = (64, 80),
                 length: int = 2000, seed: int = 0):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        self.split, self.size, self.length, self.seed = split, tuple(size), length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng, noise = sample_random_state(self.seed, self.split, index)
        return render(SceneSampler(rng).scene(), *self.size, noise)
