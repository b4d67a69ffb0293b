"""What a studio submits to run an Open Job Description template, and the farm's jobs it
becomes: one job per step.

A step is a job of its own (renderer ``openjd``, its settings the template, the
parameter values and the step's position) because everything the farm does per job
is what a step needs: its own frames (the step's task numbers, scheduler/wire/openjd.py),
chunks, requirements (``hostRequirements``), priority and fair share, retries and
failed-frame limit, dependencies (a step's ``dependsOn`` are the farm's job
dependencies), progress, bill and cancel. The template's jobs are one submission: made
together or not at all, and read and cancelled as one (``TemplateRow``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from scheduler.core.bounds import PATH_MAX, text_problem
from scheduler.core.frames import FrameRange, FrameSpecError, parse_frame_runs
from scheduler.core.placement import HostRequirements
from scheduler.errors import InvalidRequest
from scheduler.usecases.submissions import METADATA, Finite, JobTerms, Tag, Text
from scheduler.wire.openjd import (
    Problem,
    StepPlan,
    TemplateError,
    instantiate,
    minimums,
    plan_steps,
    read_template,
)
from scheduler.wire.renderers import field_error

TEMPLATE_MAX = 128 * 1024  # characters of a template (as JSON), stored with each step's job
PARAMETERS_MAX = 64


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("a parameter's value is text or a number, not true or false")
    return value


ParameterName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
ParameterValue = Annotated[
    Annotated[Text, StringConstraints(max_length=4096)] | int | Finite,
    BeforeValidator(_not_bool),
]


def _document(value: object) -> dict[str, Any] | str:
    """A template as the request gives it: an object, or text; storable (JSON without
    NaN, text without NUL or surrogates) and at most ``TEMPLATE_MAX`` characters."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        try:
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise ValueError("a template holds no NaN or infinite numbers") from None
    else:
        raise ValueError("a template is a JSON object, or its YAML (or JSON) text")
    problem = text_problem(text)
    if problem is not None:
        raise ValueError(problem)
    if len(text) > TEMPLATE_MAX:
        raise ValueError(f"a template has at most {TEMPLATE_MAX} characters (as JSON)")
    return value


Document = Annotated[
    dict[str, Any] | str,
    PlainValidator(_document),
    WithJsonSchema({"oneOf": [{"type": "object"}, {"type": "string", "maxLength": TEMPLATE_MAX}]}),
]


def path_format(root: str) -> str:
    """OpenJD's name for the kind of path ``root`` is: WINDOWS for ``C:\\x``, ``\\\\host\\x``
    or a path with backslashes; else POSIX."""
    windows = re.match(r"^[A-Za-z]:[\\/]", root) or root.startswith("\\\\") or "\\" in root
    return "WINDOWS" if windows else "POSIX"


class TemplateRequest(JobTerms):
    """An OpenJD job template to run, with its job parameters' values and the farm's
    terms for every step's job (``chunk_size``: values per chunk of a step whose tasks
    are one INT parameter; a CHUNK[INT] step's chunks are its ``defaultTaskCount``)."""

    template: Document = Field(
        description="an OpenJD job template (jobtemplate-2023-09, with TASK_CHUNKING): "
        "a JSON object, or its YAML (or JSON) text"
    )
    parameters: dict[ParameterName, ParameterValue] = Field(
        default_factory=dict,
        max_length=PARAMETERS_MAX,
        description="the template's job parameter values, by name",
    )
    files_root: Annotated[Text, StringConstraints(min_length=1, max_length=PATH_MAX)] | None = (
        Field(
            None,
            description="where the manifest's files are on the studio's machines, such as "
            "/mnt/show/sh010 or C:\\show\\sh010: PATH parameters under it are rewritten "
            "to where the node lays the files out (OpenJD path mapping); needs a manifest",
        )
    )
    tags: list[Tag] = Field(
        default_factory=list,
        max_length=32,
        description="node tags every step requires, besides its hostRequirements",
    )

    @model_validator(mode="after")
    def _files_root_with_files(self) -> TemplateRequest:
        root = self.files_root
        if root is None:
            return self
        if self.manifest is None:
            raise field_error(
                self, ("files_root",), "it names where a manifest's files are: give one"
            )
        windows = path_format(root) == "WINDOWS"
        if not re.match(r"^([A-Za-z]:\\|\\\\)" if windows else "^/", root):
            raise field_error(self, ("files_root",), f"an absolute path, not {root!r}")
        return self


# The request's terms that are a step's job's columns as they are.
_TERMS = {
    "priority", "pool", "max_attempts", "max_failed_frames", "timeout", "stall_timeout",
    *METADATA,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class StepJob:
    """A step as the job the farm makes of it."""

    plan: StepPlan
    name: str
    runs: list[FrameRange]  # its task numbers
    settings: dict[str, Any]  # the openjd renderer's
    host: HostRequirements
    after: list[int]  # the positions of the steps it waits for

    @property
    def frame_count(self) -> int:
        return sum(len(run) for run in self.runs)

    def columns(self, request: TemplateRequest) -> dict[str, Any]:
        """The job's columns, besides those every job's submission fills in."""
        cores, memory_bytes, gpus = minimums(self.host)
        return {
            **request.model_dump(mode="json", include=_TERMS),
            "name": self.name,
            "chunk_size": self.plan.chunk_size,
            "renderer": "openjd",
            "renderer_settings": self.settings,
            "limits": sorted(set(request.limits)),
            "min_cores": cores,
            "min_memory_bytes": memory_bytes,
            "min_gpus": gpus,
            "required_tags": sorted(set(request.tags)),
            "host_requirements": self.host.to_json() if self.host else None,
            "dependency_mode": "job",
            "on_dependency_failure": "wait",
            "manifest_id": request.manifest,
            **request.placement_columns(),
        }


def plan_template(
    request: TemplateRequest, max_frames: int, max_chunk_size: int
) -> tuple[str, list[StepJob]]:
    """The template's name (as its parameters resolve it) and its steps' jobs, in the
    template's order; ``InvalidRequest`` with openjd-model's messages, each at the path
    of what it names (``template.steps.0.script``, ``parameters.Frames``)."""
    try:
        job = instantiate(read_template(request.template), request.parameters)
    except TemplateError as error:
        raise InvalidRequest.at([_located(problem) for problem in error.problems]) from None
    plans = plan_steps(job, request.chunk_size)
    position = {plan.name: plan.index for plan in plans}
    steps = []
    for plan in plans:
        if plan.chunk_size > max_chunk_size:  # a CHUNK[INT]'s defaultTaskCount
            raise InvalidRequest.at(
                [
                    (
                        ("template", "steps", plan.index, "parameterSpace"),
                        f"{plan.name}: chunks of {plan.chunk_size} tasks; the farm runs at "
                        f"most {max_chunk_size} per chunk",
                    )
                ]
            )
        try:
            runs = parse_frame_runs(plan.frames, max_frames=max_frames)
        except FrameSpecError as error:
            raise InvalidRequest.at(
                [(("template", "steps", plan.index, "parameterSpace"), f"{plan.name}: {error}")]
            ) from None
        steps.append(
            StepJob(
                plan=plan,
                name=f"{job.name} / {plan.name}"[:200],
                runs=runs,
                settings={
                    "template": request.template,
                    "parameters": {k: str(v) for k, v in request.parameters.items()},
                    "step": plan.index,
                    "step_name": plan.name,
                    **_path_mapping(request.files_root),
                },
                host=plan.requirements,
                after=sorted(position[name] for name in plan.depends_on),
            )
        )
    return job.name, steps


def _path_mapping(root: str | None) -> dict[str, Any]:
    """The settings that map the studio's files root to where a node lays them out."""
    if root is None:
        return {}
    return {"files_root": root, "files_root_format": path_format(root)}


def _located(problem: Problem) -> tuple[tuple[str | int, ...], str]:
    """openjd-model's problem at its path in the request: a parameter's is under
    ``parameters``, the template's under ``template``."""
    if problem.loc[:1] == ("parameters",):
        return problem.loc, problem.message
    return ("template", *problem.loc), problem.message
