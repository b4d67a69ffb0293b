"""Open Job Description templates (``jobtemplate-2023-09``, with TASK_CHUNKING): read and
validated by openjd-model, and each step's tasks described by ranges of the farm's
"frames", so that a step of a million tasks is a few rows, never a million.

A step's tasks are numbered:

- by *value* where its parameter space is one INT parameter (or one CHUNK[INT]): the
  parameter's values are the frames (``Frame: 1-100:2`` renders, lists and bills as
  frames 1, 3, ..., 99). Chunks are runs of consecutive values: CHUNK[INT]'s
  ``defaultTaskCount`` values each, as one task whose value is the run's range
  expression, else the job's chunk size, one task per value;
- by *position* otherwise (STRING, FLOAT or PATH parameters, several parameters,
  combinations, or no parameter space at all): task ``n`` is openjd-model's ``n``-th
  parameter set (1-based), one task per chunk. openjd-model does not promise that order
  across its versions, so a task's parameters are computed where the job's chunks are
  dispatched (``tasks_of``), from the template stored with the job, never on a node.

``hostRequirements`` are kept as OpenJD states them (``HostRequirements``, in the pure
core's placement, which matches them against what each node reports of itself).

No I/O: openjd-model and PyYAML. In ``wire``, not the pure core (openjd-model is built
on pydantic): the scheduler plans and dispatches with it, and the nodes read templates.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any, Literal

import yaml
from openjd.model import (
    DecodeValidationError,
    Job,
    JobTemplate,
    StepParameterSpaceIterator,
    create_job,
    decode_job_template,
    preprocess_job_parameters,
)

from scheduler.core.frames import FrameSpecError, format_frame_spec, parse_frame_runs
from scheduler.core.placement import GPUS, MEMORY_MIB, MIB, VCPU, HostRequirements, lower

SUPPORTED_EXTENSIONS = ("TASK_CHUNKING",)
_TEMPLATE_DIR = PurePosixPath("/")  # templates reach the farm as documents, not files

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a template or its parameters: where (a path into the
    document, as a 422's ``loc``) and openjd-model's message."""

    loc: Loc
    message: str


class TemplateError(ValueError):
    """The template or its parameter values are not valid; ``problems`` says where."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{_dotted(p.loc)}: {p.message}" for p in problems))
        self.problems = problems


def read_template(document: Mapping[str, Any] | str) -> JobTemplate:
    """A job template from a JSON object or YAML (or JSON) text, validated by openjd-model."""
    if isinstance(document, str):
        try:
            document = yaml.safe_load(document)
        except yaml.YAMLError as error:
            raise TemplateError([Problem((), f"not YAML: {error}")]) from None
        except RecursionError:  # PyYAML composes nested collections recursively
            raise TemplateError([Problem((), _TOO_DEEP)]) from None
    if not isinstance(document, Mapping):
        raise TemplateError([Problem((), "a job template is an object")])
    too_complex = _too_complex(document)
    if too_complex is not None:
        raise TemplateError([Problem((), too_complex)])
    try:
        return decode_job_template(
            template=dict(document), supported_extensions=SUPPORTED_EXTENSIONS
        )
    except DecodeValidationError as error:
        raise TemplateError(problems_of(str(error))) from None


MAX_DEPTH = 32  # a template's nesting; OpenJD's own needs about 10
MAX_VALUES = 200_000  # values in a template as openjd-model walks it (aliases expanded)
_TOO_DEEP = f"a job template nests at most {MAX_DEPTH} levels of objects and lists"
_TOO_BIG = f"a job template holds at most {MAX_VALUES} values (YAML aliases count each time)"


def _too_complex(document: object) -> str | None:
    """Why openjd-model must not walk ``document`` (it recurses, and copies what YAML
    aliases share once per use): nested deeper than ``MAX_DEPTH`` (or a cycle of
    aliases), or more than ``MAX_VALUES`` values once aliases are expanded."""
    levels: list[list[object]] = [[document]]
    while True:
        children = {
            id(child): child
            for value in levels[-1]
            for child in _children(value)
            if isinstance(child, Mapping | list)
        }
        if not children:
            break
        if len(levels) > MAX_DEPTH:
            return _TOO_DEEP
        levels.append(list(children.values()))
    sizes: dict[int, int] = {}
    for level in reversed(levels):  # the deepest first: a value's children are known
        for value in level:
            sizes[id(value)] = 1 + sum(sizes.get(id(child), 1) for child in _children(value))
    return _TOO_BIG if sizes[id(document)] > MAX_VALUES else None


def _children(value: object) -> Iterable[object]:
    if isinstance(value, Mapping):
        return list(value.values())
    return value if isinstance(value, list) else ()


def instantiate(template: JobTemplate, values: Mapping[str, object]) -> Job:
    """The job the template describes with these parameter values (defaults filled in,
    constraints checked, format strings resolved)."""
    given = {name: _text(value) for name, value in values.items()}
    try:
        parameters = preprocess_job_parameters(
            job_template=template,
            job_parameter_values=given,
            job_template_dir=_TEMPLATE_DIR,  # type: ignore[arg-type]
            current_working_dir=_TEMPLATE_DIR,  # type: ignore[arg-type]
        )
        return create_job(job_template=template, job_parameter_values=parameters)
    except (ValueError, DecodeValidationError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise TemplateError([Problem(_parameter_loc(line), line) for line in lines]) from None


def problems_of(message: str) -> list[Problem]:
    """openjd-model's validation message, one problem per field it names::

    2 validation errors for JobTemplate
    steps[0] -> script -> actions -> onRun -> command:
    \tString required
    """
    problems: list[Problem] = []
    loc: Loc | None = None
    for line in message.splitlines():
        if line.startswith("\t") and loc is not None:
            problems.append(Problem(loc, line.strip()))
        elif line.endswith(":") and " validation error" not in line:
            loc = _loc(line[:-1])
    return problems or [Problem((), message.strip())]


def _loc(path: str) -> Loc:
    """``steps[0] -> script -> args[1]`` as ("steps", 0, "script", "args", 1)."""
    loc: list[str | int] = []
    for part in path.split(" -> "):
        name, *indexes = re.split(r"\[(\d+)\]", part.strip())
        if name:
            loc.append(name)
        loc.extend(int(i) for i in indexes if i)
    return tuple(loc)


def _parameter_loc(line: str) -> Loc:
    """The parameter a line of openjd-model's names: "Value (9) for parameter N ...",
    "... not defined in the template: Q", "Values missing for required job parameters: F"."""
    named = re.search(r"(?:for parameter|template:|parameters:) ([A-Za-z_]\w*)", line)
    return ("parameters", named.group(1)) if named else ("parameters",)


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc) or "template"


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise TemplateError([Problem(("parameters",), f"{value!r} is not a parameter value")])
    return str(value)


# Steps as the farm schedules them -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepPlan:
    """A step as the farm schedules it: a job of its own whose frames are the step's
    task numbers (``numbering``), cut into chunks of ``chunk_size``."""

    name: str
    index: int  # its position in the template
    depends_on: tuple[str, ...]  # names of the steps it waits for
    numbering: Literal["value", "position"]
    frames: str  # the farm's frame spec of its task numbers
    task_count: int
    chunk_size: int
    chunk_parameter: str | None  # the CHUNK[INT] parameter, whose value is a chunk's run
    requirements: HostRequirements


def plan_steps(job: Job, chunk_size: int) -> list[StepPlan]:
    """Every step of the job, in the template's order; ``chunk_size`` groups the values
    of a step whose space is one INT parameter."""
    return [_plan(job, index, chunk_size) for index in range(len(job.steps))]


def _plan(job: Job, index: int, chunk_size: int) -> StepPlan:
    step = job.steps[index]
    space = StepParameterSpaceIterator(space=step.parameterSpace)
    defs = step.parameterSpace.taskParameterDefinitions if step.parameterSpace else {}
    numbering: Literal["value", "position"] = "position"
    frames = f"1-{len(space)}"
    chunk_parameter = None
    size = 1
    if len(defs) == 1:
        [(name, definition)] = defs.items()
        kind = str(getattr(definition.type, "value", definition.type))
        if kind in ("INT", "CHUNK[INT]"):
            numbering = "value"
            frames = _int_spec(definition.range)
            if kind == "CHUNK[INT]":
                chunk_parameter = name
                size = int(space.chunks_default_task_count or 1)
            else:
                size = chunk_size
    task_count = len(space)
    if numbering == "value":  # a list may name a value twice: the farm renders it once
        task_count = sum(len(run) for run in parse_frame_runs(frames))
    return StepPlan(
        name=step.name,
        index=index,
        depends_on=tuple(d.dependsOn for d in step.dependencies or ()),
        numbering=numbering,
        frames=frames,
        task_count=task_count,
        chunk_size=max(1, size),
        chunk_parameter=chunk_parameter,
        requirements=_requirements(step.hostRequirements),
    )


def _int_spec(values: Iterable[Any]) -> str:
    """The farm's frame spec of an INT parameter's range: an expression as openjd-model
    writes it (``1-100:2``, ``1-5,9``: the farm's grammar reads OpenJD's), a list as its
    values."""
    if not isinstance(values, list):
        spec = str(values).replace(" ", "")
        try:
            parse_frame_runs(spec)
            return spec
        except FrameSpecError:  # a form the farm's grammar lacks: spell out its values
            pass
    return format_frame_spec(int(v) for v in values)


def _requirements(host: Any) -> HostRequirements:
    if host is None:
        return HostRequirements()
    amounts = {
        a.name: (
            float(a.min if a.min is not None else 0),
            None if a.max is None else float(a.max),
        )
        for a in host.amounts or ()
    }
    any_of = {a.name: lower(a.anyOf) for a in host.attributes or () if a.anyOf}
    all_of = {a.name: lower(a.allOf) for a in host.attributes or () if a.allOf}
    return HostRequirements(amounts, any_of, all_of)


def minimums(needs: HostRequirements) -> tuple[int, int, int]:
    """The cores, memory (bytes) and GPUs a step needs at least, as the farm's own
    requirements of a job state them (what its page shows; placement matches all of
    ``needs`` besides)."""
    low = {name: low for name, (low, _high) in needs.amounts.items()}
    return (
        math.ceil(low.get(VCPU, 0)),
        math.ceil(low.get(MEMORY_MIB, 0) * MIB),
        math.ceil(low.get(GPUS, 0)),
    )


TaskParameters = dict[str, tuple[str, str]]  # name -> (OpenJD type, value as text)


def tasks_of(job: Job, plan: StepPlan, frames: Iterable[int]) -> list[TaskParameters]:
    """The tasks of a chunk of the step whose frames (an arithmetic run) these are: for
    CHUNK[INT], one task whose value is the run; by value, one per value; by position,
    openjd-model's parameter sets at those positions."""
    numbers = list(frames)
    if plan.chunk_parameter is not None:
        return [{plan.chunk_parameter: ("CHUNK[INT]", _run_text(numbers))}]
    step = job.steps[plan.index]
    if plan.numbering == "value":
        [name] = step.parameterSpace.taskParameterDefinitions  # type: ignore[union-attr]
        return [{name: ("INT", str(n))} for n in numbers]
    space = StepParameterSpaceIterator(space=step.parameterSpace)
    return [
        {name: (str(p.type.value), p.value) for name, p in space[n - 1].items()} for n in numbers
    ]


def chunk_tasks(
    job: Job, plan: StepPlan, frames: Iterable[int]
) -> list[tuple[list[int], TaskParameters]]:
    """``tasks_of``, each with the frames it renders: its own, or for CHUNK[INT] the
    chunk's all."""
    numbers = list(frames)
    tasks = tasks_of(job, plan, numbers)
    if plan.chunk_parameter is not None:
        return [(numbers, tasks[0])]
    return [([frame], task) for frame, task in zip(numbers, tasks, strict=True)]


def _run_text(values: list[int]) -> str:
    """An ascending arithmetic run as an OpenJD range expression: ``1-9:2``, ``4``."""
    if len(values) == 1:
        return str(values[0])
    step = values[1] - values[0]
    return f"{values[0]}-{values[-1]}" + (f":{step}" if step != 1 else "")


class StepTasks:
    """The tasks of template jobs' chunks, where chunks are dispatched: a job's template
    is read and its step planned once, then kept (a job's settings never change; the
    key holds them too, so a database started afresh cannot be answered from the last).

    ``of(job_id, settings, chunk_size, frames)``: the chunk's tasks as its message
    carries them (``{"frames": [...], "parameters": {name: [type, value]}}``), or None
    for settings that no longer read (the node then fails the attempt saying so).
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._plans: dict[tuple[int, str], tuple[Job, StepPlan] | None] = {}

    def of(
        self, job_id: int, settings: Mapping[str, Any], chunk_size: int, frames: Iterable[int]
    ) -> list[dict[str, Any]] | None:
        key = (job_id, json.dumps(settings, sort_keys=True))  # a job id may come back
        if key not in self._plans:
            if len(self._plans) >= self.size:
                self._plans.pop(next(iter(self._plans)))  # the oldest
            self._plans[key] = _step_of(settings, chunk_size)
        planned = self._plans[key]
        if planned is None:
            return None
        job, plan = planned
        return [
            {"frames": numbers, "parameters": {name: list(typed) for name, typed in task.items()}}
            for numbers, task in chunk_tasks(job, plan, frames)
        ]


def _step_of(settings: Mapping[str, Any], chunk_size: int) -> tuple[Job, StepPlan] | None:
    try:
        job = instantiate(read_template(settings["template"]), settings.get("parameters", {}))
        return job, plan_steps(job, chunk_size)[int(settings.get("step", 0))]
    except (TemplateError, KeyError, IndexError, TypeError, ValueError):
        return None
