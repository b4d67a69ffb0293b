"""The built-in renderer: a small, deterministic numpy ray tracer of an animated scene.

Three spheres orbit above a checkered floor under a sun: diffuse and specular
shading, hard shadows and one bounce of reflection, with ``samples`` jittered rays
per pixel. The same frame and settings always give the same pixels (the jitter is
seeded by the frame), so renders can be checked and compared.

Run as a child process by the node's renderer runner::

    python -m workers.renderers.builtin --out /storage/jobs/7/frames/frame_{frame}.png \
        --frames 1,2,3 --width 320 --height 180 --samples 2

After each frame is written (atomically: a temporary file, then a rename) it prints
``renderfarm-frame: N seconds=S cpu=C`` so the runner can report frames as they finish.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

FPS = 24.0
SUN = np.array([-0.5, 1.0, -0.35]) / np.linalg.norm([-0.5, 1.0, -0.35])
BAND_PIXELS = 1 << 16  # pixels traced at a time
SPHERES = (  # radius, orbit radius, height, phase, speed, colour, reflectivity
    (1.0, 0.0, 1.0, 0.0, 0.0, (0.85, 0.85, 0.9), 0.55),
    (0.6, 2.2, 0.6, 0.0, 1.0, (0.9, 0.25, 0.2), 0.15),
    (0.45, 1.6, 0.45, math.pi, -1.6, (0.2, 0.45, 0.9), 0.25),
)


def scene_at(frame: int) -> list[tuple[np.ndarray, float, np.ndarray, float]]:
    t = frame / FPS
    placed = []
    for radius, orbit, height, phase, speed, colour, reflect in SPHERES:
        angle = phase + speed * t
        bob = 0.25 * abs(math.sin(2.0 * t + phase)) if orbit else 0.0
        centre = np.array([orbit * math.cos(angle), height + bob, orbit * math.sin(angle)])
        placed.append((centre, radius, np.array(colour), reflect))
    return placed


def _hit_spheres(origins: np.ndarray, dirs: np.ndarray, spheres) -> tuple[np.ndarray, np.ndarray]:
    """Nearest sphere distance and index per ray (inf, -1 where none)."""
    nearest = np.full(len(dirs), np.inf)
    which = np.full(len(dirs), -1)
    for index, (centre, radius, _colour, _reflect) in enumerate(spheres):
        oc = origins - centre
        b = np.einsum("ij,ij->i", oc, dirs)
        c = np.einsum("ij,ij->i", oc, oc) - radius * radius
        disc = b * b - c
        ok = disc > 0
        root = np.sqrt(np.where(ok, disc, 0.0))
        t = np.where(ok, -b - root, np.inf)
        t = np.where(t > 1e-4, t, np.where(ok & (-b + root > 1e-4), -b + root, np.inf))
        closer = t < nearest
        nearest = np.where(closer, t, nearest)
        which = np.where(closer, index, which)
    return nearest, which


def _sky(dirs: np.ndarray) -> np.ndarray:
    up = np.clip(dirs[:, 1], 0.0, 1.0)[:, None]
    return (1.0 - up) * np.array([0.95, 0.8, 0.65]) + up * np.array([0.35, 0.55, 0.9])


def trace(origins: np.ndarray, dirs: np.ndarray, spheres, depth: int) -> np.ndarray:
    colour = _sky(dirs)
    t_sphere, which = _hit_spheres(origins, dirs, spheres)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dirs[:, 1] < -1e-6, -origins[:, 1] / dirs[:, 1], np.inf)
    t = np.minimum(t_sphere, t_floor)
    hit = np.isfinite(t) & (t < 200.0)
    if not hit.any():
        return colour
    idx = np.nonzero(hit)[0]
    o, d, th = origins[idx], dirs[idx], t[idx]
    points = o + d * th[:, None]
    on_floor = t_floor[idx] <= t_sphere[idx]
    normals = np.tile(np.array([0.0, 1.0, 0.0]), (len(idx), 1))
    base = np.zeros((len(idx), 3))
    reflect = np.zeros(len(idx))
    checker = (np.floor(points[:, 0]) + np.floor(points[:, 2])) % 2 == 0
    floor_colour = np.where(checker[:, None], [0.8, 0.8, 0.75], [0.25, 0.27, 0.3])
    base[on_floor] = floor_colour[on_floor]
    reflect[on_floor] = 0.1
    for index, (centre, radius, sphere_colour, sphere_reflect) in enumerate(spheres):
        mask = (~on_floor) & (which[idx] == index)
        if mask.any():
            normals[mask] = (points[mask] - centre) / radius
            base[mask] = sphere_colour
            reflect[mask] = sphere_reflect
    lambert = np.clip(normals @ SUN, 0.0, 1.0)
    shadow_origin = points + normals * 1e-3
    t_shadow, _ = _hit_spheres(shadow_origin, np.tile(SUN, (len(idx), 1)), spheres)
    lit = ~np.isfinite(t_shadow)
    half = SUN - d
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    specular = np.clip(np.einsum("ij,ij->i", normals, half), 0.0, 1.0) ** 48 * lit
    fog = np.exp(-0.012 * th)[:, None]
    shaded = base * (0.18 + 0.82 * (lambert * lit)[:, None]) + specular[:, None] * 0.6
    if depth > 0:
        bounce = reflect > 0
        if bounce.any():
            rd = (
                d[bounce]
                - 2.0 * np.einsum("ij,ij->i", d[bounce], normals[bounce])[:, None] * normals[bounce]
            )
            mirrored = trace(shadow_origin[bounce], rd, spheres, depth - 1)
            k = reflect[bounce][:, None]
            shaded[bounce] = shaded[bounce] * (1.0 - k) + mirrored * k
    colour[idx] = shaded * fog + _sky(d) * (1.0 - fog)
    return colour


def render_frame(frame: int, width: int, height: int, samples: int) -> np.ndarray:
    """The frame as an (height, width, 3) uint8 array, traced in bands of rows of about
    ``BAND_PIXELS`` pixels: the tracer's arrays take ~0.6 KB a pixel, so a band holds a
    few tens of MB whatever the frame's size, and the frame itself 3 bytes a pixel."""
    spheres = scene_at(frame)
    t = frame / FPS
    eye = np.array([6.5 * math.sin(0.15 * t), 3.2, -6.5 * math.cos(0.15 * t)])
    target = np.array([0.0, 0.8, 0.0])
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    aspect = width / height
    scale = math.tan(math.radians(40.0) / 2.0)
    rng = np.random.default_rng(frame & 0xFFFFFFFF)
    jitters = [(0.5, 0.5)] + [tuple(rng.random(2)) for _ in range(1, samples)]
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, BAND_PIXELS // width)
    for top in range(0, height, rows):
        ys, xs = np.mgrid[top : min(height, top + rows), 0:width]
        xs = xs.ravel().astype(np.float64)
        ys = ys.ravel().astype(np.float64)
        accumulated = np.zeros((len(xs), 3))
        for jx, jy in jitters:
            px = (2.0 * (xs + jx) / width - 1.0) * aspect * scale
            py = (1.0 - 2.0 * (ys + jy) / height) * scale
            dirs = forward + px[:, None] * right + py[:, None] * up
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            origins = np.tile(eye, (len(dirs), 1))
            accumulated += trace(origins, dirs, spheres, depth=1)
        linear = np.clip(accumulated / samples, 0.0, 1.0)
        srgb = np.power(linear, 1.0 / 2.2)
        band = (srgb * 255.0 + 0.5).astype(np.uint8)
        pixels[top : top + rows] = band.reshape(-1, width, 3)
    return pixels


def write_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    Image.fromarray(pixels, "RGB").save(partial, format="PNG")
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output path with {frame}")
    parser.add_argument("--frames", required=True, help="comma-separated frame numbers")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args(argv)
    for frame in (int(f) for f in args.frames.split(",")):
        wall, cpu = time.perf_counter(), time.process_time()
        pixels = render_frame(frame, args.width, args.height, args.samples)
        write_png(pixels, Path(args.out.replace("{frame}", f"{frame:06d}")))
        print(
            f"renderfarm-frame: {frame} seconds={time.perf_counter() - wall:.4f} "
            f"cpu={time.process_time() - cpu:.4f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
