"""OpenJD templates: a step's parameter space, cut into the farm's chunks, holds exactly
the tasks openjd-model's own StepParameterSpaceIterator yields; errors say where."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from openjd.model import StepParameterSpaceIterator

from scheduler.core.chunks import plan_chunks
from scheduler.core.frames import parse_frame_spec
from scheduler.core.placement import HostRequirements
from scheduler.wire.openjd import (
    Problem,
    StepTasks,
    TemplateError,
    instantiate,
    plan_steps,
    read_template,
    tasks_of,
)


def template(space: dict[str, Any] | None, **step: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Render",
        "script": {"actions": {"onRun": {"command": "true"}}},
        **step,
    }
    if space is not None:
        body["parameterSpace"] = space
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": "t",
        "steps": [body],
    }


def params(*definitions: dict[str, Any], combination: str | None = None) -> dict[str, Any]:
    space: dict[str, Any] = {"taskParameterDefinitions": list(definitions)}
    if combination:
        space["combination"] = combination
    return space


SPACES = {
    "no space": None,
    "an INT range": params({"name": "Frame", "type": "INT", "range": "1-100"}),
    "an INT range with a step": params({"name": "Frame", "type": "INT", "range": "1-100:7"}),
    "a negative step": params({"name": "Frame", "type": "INT", "range": "20-1:-3"}),
    "several INT ranges": params({"name": "Frame", "type": "INT", "range": "1-5,9,20-30:5"}),
    "an INT list": params({"name": "Frame", "type": "INT", "range": [7, -2, 3, 12]}),
    "negative frames": params({"name": "Frame", "type": "INT", "range": "-10--1"}),
    "a FLOAT list": params({"name": "Scale", "type": "FLOAT", "range": [0.5, 1.0, 2.25]}),
    "a STRING list": params({"name": "Cam", "type": "STRING", "range": ["left", "right"]}),
    "a PATH list": params({"name": "Shot", "type": "PATH", "range": ["/s/a.hip", "/s/b.hip"]}),
    "a product": params(
        {"name": "Frame", "type": "INT", "range": "1-6"},
        {"name": "Cam", "type": "STRING", "range": ["a", "b", "c"]},
        combination="Frame * Cam",
    ),
    "an association": params(
        {"name": "Frame", "type": "INT", "range": "1-4"},
        {"name": "Take", "type": "STRING", "range": ["w", "x", "y", "z"]},
        combination="(Frame, Take)",
    ),
    "a product of an association": params(
        {"name": "Frame", "type": "INT", "range": "1-3"},
        {"name": "Take", "type": "INT", "range": [10, 20, 30]},
        {"name": "Cam", "type": "STRING", "range": ["a", "b"]},
        combination="(Frame, Take) * Cam",
    ),
    "CHUNK[INT] contiguous": params(
        {
            "name": "Frame",
            "type": "CHUNK[INT]",
            "range": "1-100",
            "chunks": {"defaultTaskCount": 7, "rangeConstraint": "CONTIGUOUS"},
        }
    ),
    "CHUNK[INT] with a step": params(
        {
            "name": "Frame",
            "type": "CHUNK[INT]",
            "range": "1-99:2",
            "chunks": {"defaultTaskCount": 10, "rangeConstraint": "NONCONTIGUOUS"},
        }
    ),
    "CHUNK[INT] times a STRING": params(
        {
            "name": "Frame",
            "type": "CHUNK[INT]",
            "range": "1-10",
            "chunks": {"defaultTaskCount": 4, "rangeConstraint": "CONTIGUOUS"},
        },
        {"name": "Cam", "type": "STRING", "range": ["a", "b"]},
        combination="Frame * Cam",
    ),
}


def farm_tasks(space: dict[str, Any] | None, chunk_size: int = 3) -> tuple[list[Any], Any]:
    """Every task of the step as the farm would dispatch it: its frames cut into chunks,
    each chunk's tasks from ``tasks_of``."""
    job = instantiate(read_template(template(space)), {})
    [plan] = plan_steps(job, chunk_size)
    frames = parse_frame_spec(plan.frames)
    assert len(frames) == plan.task_count
    chunks = plan_chunks(frames, plan.chunk_size)
    return [tasks_of(job, plan, chunk) for chunk in chunks], job


def openjd_tasks(job: Any) -> list[dict[str, tuple[str, str]]]:
    space = StepParameterSpaceIterator(space=job.steps[0].parameterSpace)
    return [{name: (str(p.type.value), p.value) for name, p in task.items()} for task in space]


def values_of(run: str) -> list[int]:
    return parse_frame_spec(run.replace(" ", ""))


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
def test_the_farms_chunks_hold_exactly_the_tasks_openjd_yields(
    space: dict[str, Any] | None,
) -> None:
    chunks, job = farm_tasks(space)
    ours = [task for chunk in chunks for task in chunk]
    theirs = openjd_tasks(job)
    chunk_param = next(
        (d["name"] for d in (space or {}).get("taskParameterDefinitions", ()) if "chunks" in d),
        None,
    )
    if chunk_param is None or len(space["taskParameterDefinitions"]) > 1:  # type: ignore[index]
        # every task exactly once
        key = lambda t: tuple(sorted(t.items()))  # noqa: E731
        assert Counter(map(key, ours)) == Counter(map(key, theirs))
        return
    # CHUNK[INT] alone: the farm cuts its own runs; each covers at most defaultTaskCount
    # values, they cover every value once, and each is a range expression OpenJD reads.
    limit = space["taskParameterDefinitions"][0]["chunks"]["defaultTaskCount"]  # type: ignore[index]
    runs = [task[chunk_param][1] for chunk in chunks for task in chunk]
    assert all(len(chunk) == 1 for chunk in chunks)
    assert all(len(values_of(run)) <= limit for run in runs)
    ours_values = sorted(v for run in runs for v in values_of(run))
    theirs_values = sorted(v for task in theirs for v in values_of(task[chunk_param][1]))
    assert ours_values == theirs_values


def test_one_int_parameter_numbers_tasks_by_value_and_groups_them_by_the_chunk_size() -> None:
    job = instantiate(read_template(template(SPACES["an INT range with a step"])), {})
    [plan] = plan_steps(job, 5)
    assert (plan.numbering, plan.frames, plan.task_count, plan.chunk_size) == (
        "value",
        "1-99:7",  # as openjd-model writes 1-100:7
        15,
        5,
    )
    [first, *_] = plan_chunks(parse_frame_spec(plan.frames), plan.chunk_size)
    assert tasks_of(job, plan, first) == [{"Frame": ("INT", str(n))} for n in (1, 8, 15, 22, 29)]


def test_other_spaces_number_tasks_by_position_one_per_chunk() -> None:
    job = instantiate(read_template(template(SPACES["a product"])), {})
    [plan] = plan_steps(job, 5)
    assert (plan.numbering, plan.frames, plan.task_count, plan.chunk_size) == (
        "position",
        "1-18",
        18,
        1,
    )


def test_a_million_tasks_are_described_by_one_range() -> None:
    space = params({"name": "Frame", "type": "INT", "range": "1-1000000"})
    job = instantiate(read_template(template(space)), {})
    [plan] = plan_steps(job, 10)
    assert (plan.frames, plan.task_count) == ("1-1000000", 1_000_000)


def test_steps_keep_their_dependencies_and_parameters_reach_the_ranges() -> None:
    document = """
specificationVersion: jobtemplate-2023-09
name: Shot {{Param.Shot}}
parameterDefinitions:
- {name: Shot, type: STRING}
- {name: Frames, type: STRING, default: "1-10"}
steps:
- name: Render
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "{{Param.Frames}}"}
  script: {actions: {onRun: {command: render, args: ["{{Task.Param.Frame}}"]}}}
- name: Encode
  dependencies: [{dependsOn: Render}]
  script: {actions: {onRun: {command: ffmpeg}}}
"""
    job = instantiate(read_template(document), {"Shot": "sh010", "Frames": "5-8"})
    render, encode = plan_steps(job, 2)
    assert job.name == "Shot sh010"
    assert (render.frames, render.depends_on) == ("5-8", ())
    assert (encode.frames, encode.task_count, encode.depends_on) == ("1-1", 1, ("Render",))


@pytest.mark.parametrize(
    ("document", "loc", "words"),
    [
        ("- not an object", (), "object"),
        ("{a: [", (), "not YAML"),
        (
            {**template(None), "steps": [{"name": "R", "script": {"actions": {}}}]},
            ("steps", 0, "script", "actions", "onRun"),
            "",
        ),
        (
            template(params({"name": "Cam", "type": "BLOB", "range": ["a"]})),
            ("steps", 0, "parameterSpace", "taskParameterDefinitions", 0),
            "BLOB",
        ),
        (
            {**template(None), "specificationVersion": "jobtemplate-1999"},
            (),
            "Unknown template version: jobtemplate-1999",
        ),
    ],
)
def test_an_invalid_template_says_where(document: Any, loc: tuple[Any, ...], words: str) -> None:
    with pytest.raises(TemplateError) as raised:
        read_template(document)
    problems = raised.value.problems
    assert any(p.loc[: len(loc)] == loc and words in p.message for p in problems), problems


def test_parameter_values_are_checked_against_their_definitions() -> None:
    document = {
        **template(None),
        "parameterDefinitions": [{"name": "N", "type": "INT", "minValue": 1, "maxValue": 5}],
    }
    parsed = read_template(document)
    for values, message in [
        ({"N": 9}, "at most 5"),
        ({"N": "x"}, "integer"),
        ({}, "missing"),
        ({"N": 2, "Q": 1}, "not defined"),
    ]:
        with pytest.raises(TemplateError) as raised:
            instantiate(parsed, values)
        [problem] = raised.value.problems
        assert problem.loc[0] == "parameters" and message in problem.message
    with pytest.raises(TemplateError) as raised:
        instantiate(parsed, {"N": 2, "Q": 1})
    assert raised.value.problems == [
        Problem(
            ("parameters", "Q"),
            "Job parameter values provided for parameters that are not defined in the template: Q",
        )
    ]
    assert instantiate(parsed, {"N": 3}).name == "t"


HOST = {"amount.worker.vcpu": 16, "amount.worker.memory": 65536, "amount.worker.gpu": 1}
ATTRS = {"attr.worker.os.family": ["linux"], "attr.worker.cpu.arch": ["x86_64"]}


@pytest.mark.parametrize(
    ("requirements", "met"),
    [
        ({}, True),
        ({"amounts": [{"name": "amount.worker.vcpu", "min": 8}]}, True),
        ({"amounts": [{"name": "amount.worker.vcpu", "min": 32}]}, False),
        ({"amounts": [{"name": "amount.worker.vcpu", "min": 4, "max": 8}]}, False),
        ({"amounts": [{"name": "amount.worker.memory", "min": 65536}]}, True),
        ({"amounts": [{"name": "amount.worker.gpu.memory", "min": 1}]}, False),  # unreported
        ({"attributes": [{"name": "attr.worker.os.family", "anyOf": ["linux", "macos"]}]}, True),
        ({"attributes": [{"name": "attr.worker.os.family", "anyOf": ["windows"]}]}, False),
        ({"attributes": [{"name": "attr.worker.cpu.arch", "anyOf": ["arm64"]}]}, False),
        ({"attributes": [{"name": "attr.studio.licence", "allOf": ["houdini"]}]}, False),
    ],
)
def test_host_requirements_as_a_table(requirements: dict[str, Any], met: bool) -> None:
    step = {"hostRequirements": requirements} if requirements else {}
    job = instantiate(read_template(template(None, **step)), {})
    [plan] = plan_steps(job, 1)
    assert plan.requirements.met_by(HOST, ATTRS) is met


def test_custom_capabilities_are_matched_by_name() -> None:
    wanted = HostRequirements(
        amounts={"amount.studio.licences": (2.0, None)},
        all_of={"attr.studio.apps": frozenset({"houdini", "nuke"})},
    )
    assert wanted.met_by({"amount.studio.licences": 3}, {"attr.studio.apps": ["Nuke", "houdini"]})
    assert not wanted.met_by({"amount.studio.licences": 1}, {"attr.studio.apps": ["houdini"]})


def test_step_tasks_reads_a_template_once_and_refuses_settings_that_do_not_read() -> None:
    space = params({"name": "Frame", "type": "INT", "range": "1-10"})
    settings = {"template": template(space), "parameters": {}, "step": 0}
    tasks = StepTasks(size=2)
    assert tasks.of(1, settings, 5, [3, 4]) == [
        {"frames": [3], "parameters": {"Frame": ["INT", "3"]}},
        {"frames": [4], "parameters": {"Frame": ["INT", "4"]}},
    ]
    other = {
        **settings,
        "template": template(params({"name": "Frame", "type": "INT", "range": "7"})),
    }
    assert tasks.of(1, other, 5, [7]) == [{"frames": [7], "parameters": {"Frame": ["INT", "7"]}}]
    assert tasks.of(2, {**settings, "template": {"name": "broken"}}, 5, [1]) is None
    assert tasks.of(3, {**settings, "step": 4}, 5, [1]) is None


@pytest.mark.parametrize(
    ("root", "given", "expected"),
    [
        ("/mnt/show/sh010", "/mnt/show/sh010/plates/a.exr", "/node/s/files/plates/a.exr"),
        ("C:\\show\\sh010", "C:\\show\\sh010\\plates\\a.exr", "/node/s/files/plates/a.exr"),
        ("\\\\nas\\show", "\\\\nas\\show\\sh010\\a.exr", "/node/s/files/sh010/a.exr"),
        ("/mnt/show/sh010", "/mnt/other/a.exr", None),  # not under the root: as given
    ],
)
def test_a_studio_path_under_its_files_root_maps_to_the_nodes_files(
    root: str, given: str, expected: str | None
) -> None:
    from pathlib import PurePosixPath

    from scheduler.usecases.templates import path_format
    from scheduler.wire.renderers import OpenJdRenderer
    from workers.renderers.openjd import _path_mapping

    settings = OpenJdRenderer(
        kind="openjd", template={}, files_root=root, files_root_format=path_format(root)
    )  # type: ignore[arg-type]
    [rule] = _path_mapping(settings, PurePosixPath("/node/s/files"))  # type: ignore[arg-type]
    changed, result = rule.apply(path=given)
    assert (result if changed else None) == expected


# A billion laughs: nine to the eighth values from a few hundred characters of aliases.
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{inner}'] * 9)}]\n"
    for inner, name in zip("abcdefg", "bcdefgh", strict=True)
)


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ("x: " + "[" * 5000 + "]" * 5000, "nests at most"),  # PyYAML's own recursion
        ({"a": json.loads("[" * 40 + "]" * 40)}, "nests at most"),
        ("name: &a [*a]", "nests at most"),  # an alias that holds itself
        (LAUGHS, "at most 200000 values"),
    ],
)
def test_a_template_too_deep_or_too_big_for_openjd_model_to_walk_is_refused(
    document: object, words: str
) -> None:
    with pytest.raises(TemplateError, match=words):
        read_template(document)  # type: ignore[arg-type]
