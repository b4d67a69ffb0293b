"""The farm's Blender driver: renders the frames of one chunk from one load of the scene.

It runs inside Blender, either as the ``blender`` executable's script::

    blender -b --python-exit-code 1 --disable-autoexec SCENE --python blender_driver.py -- JSON

or with the ``bpy`` module under plain Python, opening the scene itself::

    python -P blender_driver.py JSON

It imports only the standard library and ``bpy`` (Blender's own Python has nothing
else). ``JSON``, the last argument, is the request the node built (workers/renderers/
blender.py): ``scene`` (absolute path), ``open`` (whether to open it), ``frames``,
``scene_in_job`` (the path the job gave), ``output`` (absolute path with ``{frame}``,
without extension), ``overrides`` (the
job's settings, as data: names are looked up, never evaluated) and ``allow_scripts``.

It prints what the node's runner reads (workers/runner.py):

- ``renderfarm-frame: N seconds=S cpu=C ext=.png`` once frame N's file is in place
  (written under a temporary name, then renamed, so a file that exists is whole);
- ``renderfarm-warning: ...`` for what renders but may be wrong (missing textures);
- ``renderfarm-error: ...`` before exiting 1 when it cannot render (no such file,
  camera, view layer...); Blender's own ``Fra:`` lines give progress in between.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

FRAME_DIGITS = 6  # as ChunkMessage.output_for writes frame numbers
GPU_DEVICES = ("CUDA", "OPTIX", "HIP")
EEVEE_NAMES = ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE")  # 4.2-4.5, and before and after


class DriverError(Exception):
    """Why the chunk cannot render, in a line for the studio."""


def main(argv: list[str]) -> int:
    try:
        request = json.loads(argv[-1])
    except (IndexError, ValueError):
        return _fail("the driver takes the node's request, a JSON object, as its last argument")
    try:
        import bpy
    except ImportError as error:
        return _fail(f"no Blender here: cannot import bpy ({error})")
    try:
        render_chunk(bpy, request)
    except DriverError as error:
        return _fail(str(error))
    return 0


def render_chunk(bpy: Any, request: dict[str, Any]) -> None:
    scene_path = request["scene"]
    if not os.path.isfile(scene_path):
        raise DriverError(f"no scene file {request['scene_in_job']} in the job's files")
    if request["open"]:
        try:
            bpy.ops.wm.open_mainfile(
                filepath=scene_path, load_ui=False, use_scripts=bool(request["allow_scripts"])
            )
        except RuntimeError as error:
            raise DriverError(f"Blender cannot open the scene: {_first_line(error)}") from None
    elif not bpy.data.filepath or not os.path.samefile(bpy.data.filepath, scene_path):
        # Blender goes on with its startup file when it cannot read the one it was given.
        raise DriverError("Blender could not open the scene (see its messages above)")
    for warning in missing_files(bpy):
        print(f"renderfarm-warning: {warning}", flush=True)
    overrides = request["overrides"]
    scene = _scene(bpy, overrides.get("scene_name"))
    layer = _view_layer(scene, overrides.get("view_layer"))
    camera = _camera(bpy, overrides.get("camera"))
    apply_overrides(bpy, scene, overrides)
    if scene.render.is_movie_format:
        raise DriverError(
            f"the scene writes a movie ({scene.render.image_settings.file_format}): "
            "set output_format to render frames"
        )
    extension = scene.render.file_extension
    for frame in request["frames"]:
        wall, cpu = time.perf_counter(), time.process_time()
        scene.frame_set(frame)
        if camera is not None:
            scene.camera = camera  # after frame_set: camera markers would switch it back
        if scene.camera is None:
            raise DriverError(f"scene {scene.name!r} has no camera at frame {frame}")
        bpy.ops.render.render(write_still=False, scene=scene.name, layer=layer)
        path = request["output"].replace("{frame}", f"{frame:0{FRAME_DIGITS}d}") + extension
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = path + ".partial"
        bpy.data.images["Render Result"].save_render(filepath=partial, scene=scene)
        os.replace(partial, path)
        print(
            f"renderfarm-frame: {frame} seconds={time.perf_counter() - wall:.4f} "
            f"cpu={time.process_time() - cpu:.4f} ext={extension}",
            flush=True,
        )


def missing_files(bpy: Any) -> list[str]:
    """Images and libraries the scene names that are not there: it renders without them."""
    missing = []
    for image in bpy.data.images:
        if image.source != "FILE" or image.packed_file is not None or not image.filepath:
            continue
        path = bpy.path.abspath(image.filepath, library=image.library)
        if not os.path.exists(path):
            missing.append(f"missing texture {image.filepath} (image {image.name!r})")
    for library in bpy.data.libraries:
        if not os.path.exists(bpy.path.abspath(library.filepath)):
            missing.append(f"missing linked library {library.filepath}")
    return missing


def apply_overrides(bpy: Any, scene: Any, overrides: dict[str, Any]) -> None:
    """The job's settings over the scene's own; what the job leaves out stays."""
    render = scene.render
    if "engine" in overrides:
        _set_engine(render, overrides["engine"])
    if "samples" in overrides:
        samples = overrides["samples"]
        if render.engine == "CYCLES":
            scene.cycles.samples = samples
        elif render.engine in EEVEE_NAMES:
            scene.eevee.taa_render_samples = samples
        else:
            raise DriverError(f"samples given, but the scene renders with {render.engine}")
    for name in ("resolution_x", "resolution_y", "resolution_percentage"):
        if name in overrides:
            setattr(render, name, overrides[name])
    if "output_format" in overrides:
        render.image_settings.file_format = overrides["output_format"]
    if "color_depth" in overrides:
        render.image_settings.color_depth = str(overrides["color_depth"])
    if "cycles_device" in overrides:
        if render.engine != "CYCLES":
            raise DriverError(f"cycles_device given, but the scene renders with {render.engine}")
        _use_cycles_device(bpy, scene, overrides["cycles_device"])


def _set_engine(render: Any, engine: str) -> None:
    """Render with ``engine``, under its name in this Blender (EEVEE's changed across
    versions). Blender refuses an engine it lacks with a TypeError naming those it has."""
    names = [engine] + [name for name in EEVEE_NAMES if engine in EEVEE_NAMES and name != engine]
    for name in names:
        try:
            render.engine = name
            return
        except TypeError as error:
            refusal = error
    raise DriverError(f"this Blender has no engine {engine}: {_first_line(refusal)}")


def _use_cycles_device(bpy: Any, scene: Any, device: str) -> None:
    if device == "CPU":
        scene.cycles.device = "CPU"
        return
    preferences = bpy.context.preferences.addons["cycles"].preferences
    try:
        preferences.compute_device_type = device
    except TypeError:
        raise DriverError(f"this Blender cannot render with {device}") from None
    preferences.get_devices()
    devices = [d for d in preferences.devices if d.type == device]
    if not devices:
        raise DriverError(f"no {device} device on this node")
    for candidate in preferences.devices:
        candidate.use = candidate.type == device
    scene.cycles.device = "GPU"
    print(f"renderfarm: rendering on {', '.join(d.name for d in devices)}", flush=True)


def _scene(bpy: Any, name: str | None) -> Any:
    if name is None:
        return bpy.context.scene
    scene = bpy.data.scenes.get(name)
    if scene is None:
        raise DriverError(f"no scene named {name!r}; the file has {_names(bpy.data.scenes)}")
    return scene


def _view_layer(scene: Any, name: str | None) -> str:
    if name is None:
        return ""  # every layer the scene renders
    if scene.view_layers.get(name) is None:
        raise DriverError(
            f"no view layer named {name!r}; scene {scene.name!r} has {_names(scene.view_layers)}"
        )
    return name


def _camera(bpy: Any, name: str | None) -> Any:
    if name is None:
        return None
    camera = bpy.data.objects.get(name)
    if camera is None or camera.type != "CAMERA":
        cameras = [o for o in bpy.data.objects if o.type == "CAMERA"]
        raise DriverError(f"no camera named {name!r}; the file has {_names(cameras)}")
    return camera


def _names(items: Any) -> str:
    names = [repr(item.name) for item in items]
    return ", ".join(names) if names else "none"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [repr(error)])[0]


def _fail(reason: str) -> int:
    print(f"renderfarm-error: {reason}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
