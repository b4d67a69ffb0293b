"""The use cases of studios and operators: submitting, steering and reading jobs; studios,
keys, fair-share weights and terms, and named limits.

Each public method is one transaction. A studio only ever sees its own jobs: another
studio's job is ``NotFound``, exactly like a job that does not exist. A use case that
changes a job locks it and moves its chunks through the state writers
(``scheduler/db/transitions.py``), so the API and the scheduler take turns per job and
never overwrite each other's decisions, on SQLite or PostgreSQL.

The API never talks to the broker: a cancel marks chunks cancelled here, and the
scheduler revokes their running attempts on its next tick.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
import shlex
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from sqlalchemy import bindparam, func, insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.core.bounds import COUNT_MAX, FRAME_MAX, FRAME_MIN
from scheduler.core.chunks import plan_rows
from scheduler.core.frames import (
    FrameRange,
    FrameSpecError,
    format_frame_spec,
    parse_frame_runs,
    parse_frame_spec,
)
from scheduler.core.states import ChunkState, JobState
from scheduler.db import (
    ApiKey,
    AttemptRow,
    ChunkRow,
    FrameResultRow,
    JobDependency,
    JobRow,
    Limit,
    ManifestRow,
    NodeRow,
    Region,
    Studio,
    Subscription,
    TemplateRow,
)
from scheduler.db.among import among
from scheduler.db.engine import read_only, reads_never_wait, single_statements
from scheduler.db.transitions import lock_jobs, move_chunks, refresh_job_states
from scheduler.errors import Conflict, InvalidRequest, NotFound, TooMany, Unauthorized
from scheduler.settings import Settings
from scheduler.usecases.audit import Actor, record
from scheduler.usecases.billing import EnergyTotals, usage_by_day
from scheduler.usecases.progress import JobProgress, load_job, load_progress
from scheduler.usecases.submissions import JobRequest, JobTerms
from scheduler.usecases.templates import TemplateRequest, plan_template
from scheduler.wire.events import SchedulerBell
from scheduler.wire.messages import attempt_log_path
from scheduler.wire.progress import FrameProgress as FrameProgress  # the API reads it here
from scheduler.wire.progress import progress_board

KEY_PREFIX = "rf_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


QUOTA_RETRY_SECONDS = 60  # what a refusal past a quota tells a studio to wait
CHUNKS_CUT_AT_SUBMISSION = 1_000  # a job's first chunks; the rest wait in blocks


@dataclass(frozen=True, slots=True)
class JobDetail:
    job: JobRow
    progress: JobProgress  # with the bill so far (its energy)
    depends_on: list[int] = field(default_factory=list)
    currency: str = "CNY"


@dataclass(frozen=True, slots=True)
class TemplateDetail:
    """An OpenJD template's submission and its jobs, one per step in the template's order."""

    template: TemplateRow
    jobs: list[JobDetail]


@dataclass(frozen=True, slots=True)
class FrameStatus:
    frame: int
    state: str
    chunk_id: int
    node: str | None
    attempt: int
    render_seconds: float | None
    cpu_seconds: float | None
    output: str | None
    log: str | None
    energy_joules: float | None = None
    energy_method: str | None = None
    facility_joules: float | None = None
    cost: float | None = None
    co2_grams: float | None = None
    error: str | None = None  # why its chunk's last attempt failed, while not rendered


def scheduler_bell(settings: Settings) -> Callable[..., None]:
    """What the API calls once a change that may dispatch has committed: it wakes an
    idle scheduler (scheduler/wire/events.py), which else would wait for its next tick;
    with a node's name (an operator changed it), the scheduler reads that node again."""
    return SchedulerBell(settings.effective_broker_url).ring


class StudioService:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        # Called once a change that may dispatch has committed (a submission, a resume,
        # a retry): the API rings the scheduler's bell, so an idle one acts at once.
        self.wake = wake
        self._read_only = read_only(engine)
        self._single_statements = single_statements(engine)
        # Whether a one-statement read may run on the API's event loop (see engine.py).
        self.reads_never_wait = reads_never_wait(engine)

    def _reading(self) -> Session:
        """A session that only reads: on SQLite it never waits for the write lock."""
        return Session(self._read_only)

    # Studios and keys ------------------------------------------------------------------

    def create_studio(
        self,
        name: str,
        weight: float = 1.0,
        allow_scene_scripts: bool = False,
        allow_templates: bool | None = None,
        actor: Actor | None = None,
    ) -> tuple[Studio, str]:
        """A new studio and its first key; the key is returned once and stored hashed.
        Whether it may submit OpenJD templates: as asked, else the farm's default
        (``Settings.templates_for_new_studios``)."""
        if allow_templates is None:
            allow_templates = self.settings.templates_for_new_studios
        name = name.strip()
        if not name or len(name) > 100:
            raise InvalidRequest("name", "a studio name has 1 to 100 characters")
        with Session(self.engine) as session:
            if session.exec(select(Studio).where(Studio.name == name)).first():
                raise Conflict(f"a studio named {name!r} exists already")
            studio = Studio(
                name=name,
                weight=weight,
                allow_scene_scripts=allow_scene_scripts,
                allow_templates=allow_templates,
                created_at=self.clock(),
            )
            session.add(studio)
            session.flush()
            assert studio.id is not None
            key = self._add_key(session, studio.id)
            record(
                session, actor, "studio.create", name, self.clock(), weight=weight,
                allow_scene_scripts=allow_scene_scripts, allow_templates=allow_templates,
                key=key[:10],
            )  # fmt: skip
            session.commit()
            session.refresh(studio)
            return studio, key

    def create_key(self, studio_name: str, actor: Actor | None = None) -> str:
        """A new key of the studio (its others keep working: revoke them when the
        studio has moved to it, ``revoke_key``)."""
        with Session(self.engine) as session:
            studio = self._studio_named(session, studio_name)
            assert studio.id is not None
            key = self._add_key(session, studio.id)
            record(session, actor, "studio.key.create", studio_name, self.clock(), key=key[:10])
            session.commit()
            return key

    def _add_key(self, session: Session, studio_id: int) -> str:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        session.add(
            ApiKey(
                studio_id=studio_id,
                key_hash=hash_key(key),
                prefix=key[:10],
                created_at=self.clock(),
            )
        )
        return key

    def list_keys(self, studio_name: str) -> Sequence[ApiKey]:
        """The studio's keys: their first characters (the prefix), when each was made and
        revoked; never the keys, which are kept only as hashes."""
        with self._reading() as session:
            studio = self._studio_named(session, studio_name)
            return session.exec(
                select(ApiKey).where(ApiKey.studio_id == studio.id).order_by(col(ApiKey.id))
            ).all()

    def revoke_key(self, studio_name: str, prefix: str, actor: Actor | None = None) -> ApiKey:
        """Revoke the studio's key that starts with ``prefix`` (``list_keys`` shows them):
        refused from then on (within the API's key cache, 10 s). Its last key too: a
        studio whose keys are all revoked is locked out until it is given a new one."""
        with Session(self.engine) as session:
            studio = self._studio_named(session, studio_name)
            found = session.exec(
                select(ApiKey).where(
                    ApiKey.studio_id == studio.id, col(ApiKey.prefix).startswith(prefix)
                )
            ).all()
            if len(prefix) < 6 or len(found) != 1:
                many = "several keys" if len(found) > 1 else "no key"
                raise NotFound(
                    f"{many} of {studio_name!r} start(s) with {prefix!r}: give at least 6 "
                    "characters of one (renderfarm studio keys NAME lists them)"
                )
            [key] = found
            if key.revoked_at is None:
                key.revoked_at = self.clock()
                session.add(key)
                record(session, actor, "studio.key.revoke", studio_name, self.clock(),
                       key=key.prefix)  # fmt: skip
            session.commit()
            session.refresh(key)
            return key

    def set_weight(self, studio_name: str, weight: float, actor: Actor | None = None) -> Studio:
        """An operator sets a studio's fair-share weight (default 1)."""
        if not weight > 0 or not math.isfinite(weight):
            raise InvalidRequest("weight", "a fair-share weight is a number above 0")
        return self._update_studio(studio_name, actor, weight=weight)

    def set_scene_scripts(
        self, studio_name: str, allowed: bool, actor: Actor | None = None
    ) -> Studio:
        """An operator allows (or forbids) the scripts inside a studio's scenes to run, for
        the jobs that ask (``allow_scripts``); the farm's switch must allow them too."""
        return self._update_studio(studio_name, actor, allow_scene_scripts=allowed)

    def set_templates(self, studio_name: str, allowed: bool, actor: Actor | None = None) -> Studio:
        """An operator allows (or forbids) a studio to submit OpenJD templates, whose
        commands its nodes run (as ``RENDERFARM_RUN_AS``'s user, where set)."""
        return self._update_studio(studio_name, actor, allow_templates=allowed)

    def set_home_region(
        self, studio_name: str, region: str | None, actor: Actor | None = None
    ) -> Studio:
        """An operator names where a studio's own machines would render (a region the
        farm knows): its jobs' bills then say what the farm's placement saved."""
        if region is not None:
            with self._reading() as session:
                if session.get(Region, region) is None:
                    known = sorted(session.exec(select(Region.name)).all())
                    raise InvalidRequest("region", f"no region {region!r}; known: {known}")
        return self._update_studio(studio_name, actor, home_region=region)

    def set_quota(
        self,
        studio_name: str,
        queued_jobs: int | None,
        queued_frames: int | None,
        requests_per_second: int | None,
        actor: Actor | None = None,
    ) -> Studio:
        """An operator bounds what a studio may ask: jobs not finished and frames
        waiting for a node at once (a submission past them is refused, 429), and API
        requests per second. None: no bound."""
        bounds = {"jobs": queued_jobs, "frames": queued_frames, "rate": requests_per_second}
        for bound, value in bounds.items():
            if value is not None and not 1 <= value <= COUNT_MAX:
                raise InvalidRequest(bound, f"a quota is 1 to {COUNT_MAX}, or none")
        return self._update_studio(
            studio_name,
            actor,
            max_queued_jobs=queued_jobs,
            max_queued_frames=queued_frames,
            requests_per_second=requests_per_second,
        )

    def _update_studio(self, studio_name: str, actor: Actor | None, **values: Any) -> Studio:
        """An operator's change of a studio's own columns."""
        with Session(self.engine) as session:
            studio = self._studio_named(session, studio_name)
            for name, value in values.items():
                setattr(studio, name, value)
            session.add(studio)
            record(session, actor, "studio.update", studio_name, self.clock(), **values)
            session.commit()
            session.refresh(studio)
            return studio

    def get_studio(self, name: str) -> Studio:
        with self._reading() as session:
            return self._studio_named(session, name)

    def list_studios(self) -> Sequence[Studio]:
        with self._reading() as session:
            return session.exec(select(Studio).order_by(col(Studio.name))).all()

    def set_terms(
        self,
        studio_name: str,
        pool: str,
        minimum: int = 0,
        maximum: int | None = None,
        actor: Actor | None = None,
    ) -> Subscription:
        """An operator guarantees a studio ``minimum`` slots of a pool, at most ``maximum``."""
        if minimum < 0 or (maximum is not None and maximum < minimum):
            raise InvalidRequest("maximum", "need 0 <= minimum <= maximum")
        with Session(self.engine) as session:
            studio = self._studio_named(session, studio_name)
            terms = session.exec(
                select(Subscription).where(
                    Subscription.studio_id == studio.id, Subscription.pool == pool
                )
            ).first()
            if terms is None:
                assert studio.id is not None
                terms = Subscription(studio_id=studio.id, pool=pool)
            terms.min_slots = minimum
            terms.max_slots = maximum
            session.add(terms)
            record(session, actor, "studio.terms", studio_name, self.clock(), pool=pool,
                   minimum=minimum, maximum=maximum)  # fmt: skip
            session.commit()
            session.refresh(terms)
            return terms

    def set_limit(self, name: str, capacity: int, actor: Actor | None = None) -> Limit:
        """An operator sets a named farm-wide limit: at most ``capacity`` chunks hold it."""
        name = name.strip()
        if not name or len(name) > 64 or capacity < 0:
            raise InvalidRequest("limit", "a limit has a name of 1 to 64 characters, capacity >= 0")
        with Session(self.engine) as session:
            limit = session.get(Limit, name) or Limit(name=name, capacity=capacity)
            limit.capacity = capacity
            session.add(limit)
            record(session, actor, "limit.set", name, self.clock(), capacity=capacity)
            session.commit()
            session.refresh(limit)
            return limit

    def list_limits(self) -> Sequence[Limit]:
        with self._reading() as session:
            return session.exec(select(Limit).order_by(col(Limit.name))).all()

    def _check_scene_scripts(self, session: Session, studio_id: int) -> None:
        """A job may run its scene's scripts only where the farm runs scene scripts at all
        (RENDERFARM_ALLOW_SCENE_SCRIPTS, the operator's master switch) and an operator
        allowed its studio. A 422 naming the field: the job runs once it asks for no
        scripts, or once an operator allows them; either way the message says which."""
        if not self.settings.allow_scene_scripts:
            raise InvalidRequest(
                "renderer.allow_scripts",
                "this farm does not run scripts inside scenes "
                "(an operator allows them with RENDERFARM_ALLOW_SCENE_SCRIPTS)",
            )
        _check_grant(
            session, studio_id, "allow_scene_scripts", "renderer.allow_scripts",
            "run scripts inside scenes", "scripts",
        )  # fmt: skip

    def _studio_named(self, session: Session, name: str) -> Studio:
        studio = session.exec(select(Studio).where(Studio.name == name)).first()
        if studio is None or studio.id is None:
            raise NotFound(f"no studio named {name!r}")
        return studio

    def authenticate(self, key: str) -> Studio:
        with self._reading() as session:
            row = studio_of_key(session, hash_key(key))
            if row is None:
                raise Unauthorized("unknown or revoked API key")
            return row

    # Submitting ------------------------------------------------------------------------

    def known_pools(self, session: Session) -> set[str]:
        nodes = session.exec(select(NodeRow.pool).distinct()).all()
        return set(self.settings.pools) | set(nodes)

    def submit_job(
        self,
        studio_id: int,
        request: JobRequest,
        keep: Callable[[Session, JobDetail], None] | None = None,
        actor: Actor | None = None,
    ) -> JobRow:
        """Create the job and its chunks in one transaction, or nothing. ``keep`` is
        called in that transaction, just before it commits, with the job as the studio
        will read it: what it writes (an idempotency key's record) is committed with the
        job or not at all, and an error it raises creates nothing."""
        try:
            runs = parse_frame_runs(request.frames, max_frames=self.settings.max_frames_per_job)
        except FrameSpecError as error:
            raise InvalidRequest("frames", str(error)) from None
        self._check_chunk_size(request.chunk_size)
        with Session(self.engine) as session:
            self._check_pool(session, request.pool)
            self._check_depends_on(session, studio_id, request.depends_on)
            if getattr(request.renderer, "allow_scripts", False):
                self._check_scene_scripts(session, studio_id)
            self._check_quota(session, studio_id, sum(len(run) for run in runs))
            self._check_files_and_limits(session, studio_id, request)
            job = self._insert_job(
                session, studio_id, request.columns(), runs, sorted(set(request.depends_on))
            )
            if keep is not None:
                keep(session, self._detail(session, job))
            record(session, actor, "job.submit", f"job {job.id}", self.clock(), name=job.name,
                   frames=job.frame_count)  # fmt: skip
            session.commit()
            self.wake()
            session.refresh(job)
            return job

    def submit_template(
        self,
        studio_id: int,
        request: TemplateRequest,
        keep: Callable[[Session, TemplateDetail], None] | None = None,
        actor: Actor | None = None,
    ) -> TemplateDetail:
        """Create an OpenJD template's jobs, one per step (scheduler/usecases/templates.py),
        with their chunks and the dependencies between them, in one transaction, or
        nothing; ``keep`` as for ``submit_job``. A step that depends on no other step
        waits for the request's ``depends_on``."""
        self._check_chunk_size(request.chunk_size)
        with Session(self.engine) as session:
            self._check_templates_allowed(session, studio_id)
            name, steps = plan_template(
                request, self.settings.max_frames_per_job, self.settings.max_chunk_size
            )
            self._check_pool(session, request.pool)
            self._check_depends_on(session, studio_id, request.depends_on)
            self._check_quota(
                session, studio_id, sum(step.frame_count for step in steps), jobs=len(steps)
            )
            self._check_files_and_limits(session, studio_id, request)
            template = TemplateRow(
                studio_id=studio_id,
                name=name[:200],
                parameters=dict(request.parameters),
                submitted_at=self.clock(),
            )
            session.add(template)
            session.flush()
            jobs: list[JobRow] = []
            for step in steps:
                after = [jobs[i].id for i in step.after]  # a step comes after those it needs
                columns = {**step.columns(request), "template_id": template.id}
                depends_on = sorted(set(request.depends_on)) if not step.after else []
                jobs.append(self._insert_job(session, studio_id, columns, step.runs, depends_on))
                for other in after:
                    assert other is not None and jobs[-1].id is not None
                    session.add(JobDependency(job_id=jobs[-1].id, depends_on=other))
            session.flush()
            if keep is not None:
                keep(session, self._template_detail(session, template))
            record(session, actor, "template.submit", f"template {template.id}", self.clock(),
                   name=template.name, jobs=[job.id for job in jobs])  # fmt: skip
            session.commit()
            self.wake()
            return self._template_detail(session, template)  # read afresh, as committed

    def _check_templates_allowed(self, session: Session, studio_id: int) -> None:
        """A template's commands run on the nodes as the studio wrote them: only a
        studio an operator allowed submits templates (a 422 that says how)."""
        _check_grant(
            session, studio_id, "allow_templates", "template", "submit OpenJD templates",
            "templates",
        )  # fmt: skip

    def _check_chunk_size(self, chunk_size: int) -> None:
        if chunk_size > self.settings.max_chunk_size:
            raise InvalidRequest(
                "chunk_size", f"at most {self.settings.max_chunk_size} frames per chunk"
            )

    def _check_pool(self, session: Session, pool: str) -> None:
        pools = self.known_pools(session)
        if pool not in pools:
            raise InvalidRequest("pool", f"unknown pool {pool!r}; known pools: {sorted(pools)}")

    def _check_depends_on(self, session: Session, studio_id: int, jobs: Iterable[int]) -> None:
        for dependency in set(jobs):
            other = session.get(JobRow, dependency)
            if other is None or other.studio_id != studio_id:
                raise InvalidRequest("depends_on", f"no job {dependency} of this studio")

    def _check_files_and_limits(self, session: Session, studio_id: int, terms: JobTerms) -> None:
        if terms.manifest is not None:
            manifest = session.get(ManifestRow, terms.manifest)
            if manifest is None or manifest.studio_id != studio_id:
                raise InvalidRequest("manifest", f"no manifest {terms.manifest} of this studio")
        if terms.limits:
            known = set(session.exec(select(Limit.name)).all())
            unknown = sorted(set(terms.limits) - known)
            if unknown:
                raise InvalidRequest(  # (the farm's other limits are not a studio's to list)
                    "limits", f"unknown limit(s) {unknown}: ask the farm's operator"
                )

    def _insert_job(
        self,
        session: Session,
        studio_id: int,
        columns: dict[str, Any],
        runs: list[FrameRange],
        depends_on: list[int],
    ) -> JobRow:
        """A job of these columns, its dependencies and its first chunks (a few rows
        whatever its size: the scheduler cuts the rest from blocks as it dispatches,
        scheduler/core/chunks.py). The caller checked the columns."""
        job = JobRow.model_validate(
            columns,
            update={
                "studio_id": studio_id,
                "frames": ",".join(map(str, runs)),
                "frame_count": sum(len(run) for run in runs),
                "max_attempts": columns.get("max_attempts") or self.settings.default_max_attempts,
                "timeout": columns.get("timeout") or self.settings.frame_timeout,
                "state": JobState.QUEUED,
                "submitted_at": self.clock(),
            },
        )
        session.add(job)
        session.flush()
        assert job.id is not None
        for dependency in depends_on:
            session.add(JobDependency(job_id=job.id, depends_on=dependency))
        rows = plan_rows(runs, job.chunk_size, CHUNKS_CUT_AT_SUBMISSION)
        session.execute(
            insert(ChunkRow),
            [
                {
                    "job_id": job.id,
                    "position": row.position,
                    "pool": job.pool,
                    "first_frame": row.frames.start,
                    "last_frame": row.frames.end,
                    "step": row.frames.step,
                    "frame_count": len(row.frames),
                    "chunks": row.chunks,
                    "state": ChunkState.QUEUED,
                    "attempts": 0,
                    "retry_base": 0,
                    "failures": 0,
                }
                for row in rows
            ],
        )
        return job

    # Reading ---------------------------------------------------------------------------

    def _check_quota(self, session: Session, studio_id: int, frames: int, jobs: int = 1) -> None:
        """Refuse (429) ``jobs`` new jobs of ``frames`` in all past the studio's bounds
        on unfinished jobs and queued frames. The studio's row is locked first, so that
        simultaneous submissions count each other (PostgreSQL; SQLite runs one writer
        at a time)."""
        studio = session.exec(select(Studio).where(Studio.id == studio_id).with_for_update()).one()
        if studio.max_queued_jobs is not None:
            unfinished = session.exec(
                select(func.count())
                .select_from(JobRow)
                .where(
                    JobRow.studio_id == studio_id,
                    col(JobRow.state).not_in([s.value for s in JobState if s.is_final]),
                )
            ).one()
            if unfinished + jobs > studio.max_queued_jobs:
                raise TooMany(
                    f"this studio has {unfinished} unfinished jobs, its quota is "
                    f"{studio.max_queued_jobs}: {jobs} more do not fit; submit once some "
                    "are done",
                    QUOTA_RETRY_SECONDS,
                )
        if studio.max_queued_frames is not None:
            queued = session.exec(
                select(func.coalesce(func.sum(ChunkRow.frame_count), 0))
                .join(JobRow, col(JobRow.id) == col(ChunkRow.job_id))
                .where(JobRow.studio_id == studio_id, ChunkRow.state == ChunkState.QUEUED)
            ).one()
            if queued + frames > studio.max_queued_frames:
                raise TooMany(
                    f"this studio has {queued} frames queued, its quota is "
                    f"{studio.max_queued_frames}: {frames} more do not fit",
                    QUOTA_RETRY_SECONDS,
                )

    def _own_job(self, session: Session, studio_id: int, job_id: int, lock: bool = False) -> JobRow:
        """The studio's job (locked for this transaction if it is to change it)."""
        job = (
            next(iter(lock_jobs(session, [job_id])), None)
            if lock
            else session.exec(_JOB, params={"id": job_id}).first()
        )
        if job is None or job.studio_id != studio_id:
            raise NotFound(f"no job {job_id}")
        return job

    def get_job(self, studio_id: int, job_id: int) -> JobDetail:
        with self._single_statements.connect() as connection:
            found = load_job(connection, job_id)
        if found is None or found[0].studio_id != studio_id:
            raise NotFound(f"no job {job_id}")
        job, progress, depends_on = found
        return JobDetail(job, progress, depends_on, self.settings.currency)

    def list_jobs(
        self,
        studio_id: int,
        state: JobState | None,
        limit: int,
        offset: int,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[list[JobDetail], int]:
        """The studio's jobs, newest first, in one state and with these metadata values
        (``{"show": "Mulan", "shot": "sh020"}``) where given."""
        with self._reading() as session:
            where = [col(JobRow.studio_id) == studio_id]
            if state is not None:
                where.append(col(JobRow.state) == state)
            for name, value in (metadata or {}).items():
                where.append(getattr(JobRow, name) == value)
            query = select(JobRow).where(*where)
            counter = select(func.count()).select_from(JobRow).where(*where)
            total = session.exec(counter).one()
            jobs = list(
                session.exec(query.order_by(col(JobRow.id).desc()).offset(offset).limit(limit))
            )
            ids = [job.id for job in jobs if job.id]
            progress = load_progress(session, jobs)
            deps = _dependencies_of(session, ids)
            details = [
                JobDetail(job, progress[job.id], deps.get(job.id, []), self.settings.currency)
                for job in jobs
                if job.id
            ]
            return details, total

    def list_frames(
        self,
        studio_id: int,
        job_id: int,
        offset: int = 0,
        limit: int | None = None,
        state: str | None = None,
        after: int | None = None,
    ) -> list[FrameStatus]:
        """The job's frames in ascending order: ``limit`` of them after frame ``after``
        (a keyset: a page reads its own rows, found by index seeks, whatever the job's
        size), less the first ``offset`` (which reads what it skips); only those in
        ``state`` if given."""
        with self._reading() as session:
            self._own_job(session, studio_id, job_id)
            if state == "done":  # the frames with a result, whatever their chunk's state
                query = select(FrameResultRow).where(FrameResultRow.job_id == job_id)
                if after is not None:
                    query = query.where(col(FrameResultRow.frame) > after)
                query = query.order_by(col(FrameResultRow.frame)).offset(offset).limit(limit)
                return [_frame_status(job_id, None, r.frame, r) for r in session.exec(query)]
            frames = _frames_after(session, job_id, after, state, 0 if state else offset)
            skip = offset if state else 0
            page: list[FrameStatus] = []
            while limit is None or len(page) < limit:
                wanted = FRAME_PAGE if limit is None else limit - len(page)
                batch = list(islice(frames, wanted))
                if not batch:
                    break
                results = {  # frames ascend: one range, no list of frames to bind
                    r.frame: r
                    for r in session.exec(
                        select(FrameResultRow).where(
                            FrameResultRow.job_id == job_id,
                            col(FrameResultRow.frame) >= batch[0][1],
                            col(FrameResultRow.frame) <= batch[-1][1],
                        )
                    )
                }
                errors = _last_errors(session, [chunk for chunk, _ in batch])
                for chunk, frame in batch:
                    if state is not None and frame in results:
                        continue  # rendered by an earlier attempt: done, not in ``state``
                    if skip:
                        skip -= 1
                        continue
                    page.append(
                        _frame_status(
                            job_id, chunk, frame, results.get(frame), errors.get(chunk.id)
                        )
                    )
            return page

    def running_progress(
        self, job_id: int, frames: Sequence[FrameStatus]
    ) -> dict[int, FrameProgress]:
        """How far each running frame's current attempt has rendered, and its status
        line, as its node last posted (volatile, in Redis: scheduler/wire/progress.py).
        Empty when none of ``frames`` runs, or Redis does not answer."""
        running = {f.frame: f.attempt for f in frames if f.state == ChunkState.RUNNING}
        if not running:
            return {}
        posted = progress_board(self.settings.effective_broker_url).read(job_id)
        return {
            frame: count for frame, count in posted.items() if running.get(frame) == count.attempt
        }

    def frame_status(self, studio_id: int, job_id: int, frame: int) -> FrameStatus:
        with self._reading() as session:
            self._own_job(session, studio_id, job_id)
            chunk = _chunk_holding(session, job_id, frame)
            if chunk is None or frame not in chunk.frame_range():
                raise NotFound(f"job {job_id} has no frame {frame}")
            result = session.exec(
                select(FrameResultRow).where(
                    FrameResultRow.job_id == job_id, FrameResultRow.frame == frame
                )
            ).first()
            error = _last_errors(session, [chunk]).get(chunk.id)
            return _frame_status(job_id, chunk, frame, result, error)

    def finished_outputs(self, studio_id: int, job_id: int) -> list[tuple[int, str]]:
        """(frame, output file relative to storage) of the job's finished frames that
        wrote a file, in ascending frame order."""
        with self._reading() as session:
            self._own_job(session, studio_id, job_id)
            found = session.exec(
                select(FrameResultRow.frame, FrameResultRow.output)
                .where(FrameResultRow.job_id == job_id, col(FrameResultRow.output).is_not(None))
                .order_by(col(FrameResultRow.frame))
            ).all()
            return [(frame, output) for frame, output in found if output is not None]

    def list_nodes(self) -> Sequence[NodeRow]:
        with self._reading() as session:
            return session.exec(select(NodeRow).order_by(col(NodeRow.name))).all()

    # Steering --------------------------------------------------------------------------

    def cancel_job(self, studio_id: int, job_id: int, actor: Actor | None = None) -> JobDetail:
        """Stop the job: unfinished chunks are cancelled; the scheduler revokes renders."""
        with Session(self.engine) as session:
            job = self._own_job(session, studio_id, job_id, lock=True)
            if JobState(job.state).is_final:
                raise Conflict(f"job {job_id} is {job.state} already")
            move_chunks(
                session,
                ChunkState.CANCELLED,
                (ChunkState.QUEUED, ChunkState.DISPATCHED, ChunkState.RUNNING),
                job=job_id,
                values={"finished_at": self.clock()},
            )
            job.cancelled = True
            return self._finish_change(session, job, actor, "job.cancel")

    def suspend_job(self, studio_id: int, job_id: int, actor: Actor | None = None) -> JobDetail:
        """No new chunk is dispatched; chunks already rendering finish."""
        with Session(self.engine) as session:
            job = self._own_job(session, studio_id, job_id, lock=True)
            if JobState(job.state).is_final:
                raise Conflict(f"job {job_id} is {job.state}; only an unfinished job suspends")
            job.suspended = True
            return self._finish_change(session, job, actor, "job.suspend")

    def resume_job(self, studio_id: int, job_id: int, actor: Actor | None = None) -> JobDetail:
        with Session(self.engine) as session:
            job = self._own_job(session, studio_id, job_id, lock=True)
            if not job.suspended or JobState(job.state).is_final:
                raise Conflict(f"job {job_id} is {job.state}, not suspended")
            job.suspended = False
            return self._finish_change(session, job, actor, "job.resume", wake=True)

    def retry_job(self, studio_id: int, job_id: int, actor: Actor | None = None) -> JobDetail:
        """Queue the failed chunks again, each with a fresh allowance of attempts.

        Chunks that the farm ended without rendering (a job past its limit of failed
        frames, or whose dependency failed) are queued again too; a job the studio
        cancelled cannot be retried. The job is locked, so a cancel committed meanwhile
        is seen here and wins.
        """
        with Session(self.engine) as session:
            job = self._own_job(session, studio_id, job_id, lock=True)
            if job.cancelled:
                raise Conflict(f"job {job_id} is cancelled")
            retried = move_chunks(
                session,
                ChunkState.QUEUED,
                (ChunkState.FAILED, ChunkState.CANCELLED),
                job=job_id,
                values={
                    "retry_base": ChunkRow.attempts,
                    "failures": 0,
                    "not_before": None,
                    "finished_at": None,
                    "node": None,
                },
            )
            if not retried.ids:
                raise Conflict(f"job {job_id} has no failed frames to retry")
            job.message = None
            return self._finish_change(
                session, job, actor, "job.retry", wake=True, chunks=len(retried.ids)
            )

    def requeue_frames(
        self, studio_id: int, job_id: int, spec: str, actor: Actor | None = None
    ) -> JobDetail:
        """Render these frames again: the chunks that hold them (failed, ended by the
        farm, or rendering now: a hung frame) go back to the queue with a fresh allowance
        of attempts, their current attempts superseded (the scheduler revokes them). A
        frame already done is refused: its bill is final. Chunks are the unit: a chunk of
        several frames renders all of them again (those done keep their first result)."""
        try:
            ordered = parse_frame_spec(spec, self.settings.max_frames_per_job)  # sorted
        except FrameSpecError as error:
            raise InvalidRequest("frames", str(error)) from None
        wanted = set(ordered)
        with Session(self.engine) as session:
            job = self._own_job(session, studio_id, job_id, lock=True)
            if job.cancelled:
                raise Conflict(f"job {job_id} is cancelled")
            rows = session.exec(
                select(ChunkRow).where(
                    ChunkRow.job_id == job_id,
                    col(ChunkRow.first_frame) <= max(wanted),
                    col(ChunkRow.last_frame) >= min(wanted),
                )
            ).all()
            held = {c.id: c.frame_range().among(ordered) for c in rows}
            holding = [c for c in rows if held[c.id]]
            found = {f for frames in held.values() for f in frames}
            if found != wanted:
                raise InvalidRequest(
                    "frames", f"not frames of job {job_id}: {format_frame_spec(wanted - found)}"
                )
            done = sorted(f for c in holding if c.state == ChunkState.DONE for f in held[c.id])
            if done:
                raise Conflict(
                    f"frame(s) {format_frame_spec(done)} of job {job_id} are done: a done "
                    "frame's bill is final, so it is not rendered again"
                )
            again = (
                ChunkState.FAILED,
                ChunkState.CANCELLED,
                ChunkState.DISPATCHED,
                ChunkState.RUNNING,
            )
            movable = [c.id for c in holding if c.state in again and c.id is not None]
            if not movable:
                raise Conflict(f"frame(s) {spec} of job {job_id} are waiting in the queue already")
            move_chunks(
                session, ChunkState.QUEUED, again, ids=movable,
                values={"retry_base": ChunkRow.attempts, "failures": 0, "not_before": None,
                        "finished_at": None, "node": None},
            )  # fmt: skip
            job.message = None
            return self._finish_change(
                session, job, actor, "job.requeue", wake=True, frames=format_frame_spec(wanted),
                chunks=len(movable),
            )  # fmt: skip

    def set_priority(
        self, studio_id: int, job_id: int, priority: int, actor: Actor | None = None
    ) -> JobDetail:
        with Session(self.engine) as session:
            job = self._own_job(session, studio_id, job_id, lock=True)
            before, job.priority = job.priority, priority
            return self._finish_change(
                session, job, actor, "job.priority", before=before, priority=priority
            )

    def _finish_change(
        self,
        session: Session,
        job: JobRow,
        actor: Actor | None,
        action: str,
        wake: bool = False,
        **detail: Any,
    ) -> JobDetail:
        session.add(job)
        session.flush()
        refresh_job_states(session, [job], self.clock())
        record(session, actor, action, f"job {job.id}", self.clock(), **detail)
        session.commit()
        if wake:
            self.wake()
        session.refresh(job)
        return self._detail(session, job)

    def get_template(self, studio_id: int, template_id: int) -> TemplateDetail:
        with self._reading() as session:
            return self._template_detail(
                session, self._own_template(session, studio_id, template_id)
            )

    def list_templates(
        self, studio_id: int, limit: int, offset: int
    ) -> tuple[list[TemplateDetail], int]:
        """The studio's templates, the latest first, each with its jobs."""
        with self._reading() as session:
            mine = TemplateRow.studio_id == studio_id
            total = session.exec(select(func.count()).select_from(TemplateRow).where(mine)).one()
            templates = session.exec(
                select(TemplateRow)
                .where(mine)
                .order_by(col(TemplateRow.id).desc())
                .offset(offset)
                .limit(limit)
            ).all()
            return [self._template_detail(session, t) for t in templates], total

    def cancel_template(
        self, studio_id: int, template_id: int, actor: Actor | None = None
    ) -> TemplateDetail:
        """Cancel every unfinished job of the template (as ``cancel_job`` does each)."""
        with Session(self.engine) as session:
            template = self._own_template(session, studio_id, template_id)
            ids = session.exec(select(JobRow.id).where(JobRow.template_id == template_id)).all()
            jobs = [
                job for job in lock_jobs(session, [i for i in ids if i is not None])
                if not JobState(job.state).is_final
            ]  # fmt: skip
            if not jobs:
                raise Conflict(f"template {template_id}'s jobs are all finished already")
            for job in jobs:
                move_chunks(
                    session,
                    ChunkState.CANCELLED,
                    (ChunkState.QUEUED, ChunkState.DISPATCHED, ChunkState.RUNNING),
                    job=job.id,
                    values={"finished_at": self.clock()},
                )
                job.cancelled = True
                session.add(job)
            session.flush()
            refresh_job_states(session, jobs, self.clock())
            record(session, actor, "template.cancel", f"template {template_id}", self.clock(),
                   jobs=[job.id for job in jobs])  # fmt: skip
            session.commit()
            return self._template_detail(session, template)

    def _own_template(self, session: Session, studio_id: int, template_id: int) -> TemplateRow:
        template = session.get(TemplateRow, template_id)
        if template is None or template.studio_id != studio_id:
            raise NotFound(f"no template {template_id}")
        return template

    def _template_detail(self, session: Session, template: TemplateRow) -> TemplateDetail:
        jobs = list(
            session.exec(
                select(JobRow).where(JobRow.template_id == template.id).order_by(col(JobRow.id))
            )
        )
        ids = [job.id for job in jobs if job.id is not None]
        progress = load_progress(session, jobs)
        deps = _dependencies_of(session, ids)
        return TemplateDetail(
            template,
            [
                JobDetail(job, progress[job.id], deps.get(job.id, []), self.settings.currency)
                for job in jobs
                if job.id is not None
            ],
        )

    def _detail(self, session: Session, job: JobRow) -> JobDetail:
        assert job.id is not None
        deps = _dependencies_of(session, [job.id]).get(job.id, [])
        progress = load_progress(session, [job])[job.id]
        return JobDetail(job, progress, deps, self.settings.currency)

    def usage_by_day(
        self, studio_id: int, since: dt.date | None, until: dt.date | None
    ) -> list[tuple[dt.date, EnergyTotals]]:
        """The studio's frames, energy, cost and carbon per billing day."""
        if since is not None and until is not None and since > until:
            raise InvalidRequest("since", f"{since} is after until ({until})")
        with self._reading() as session:
            return usage_by_day(session, studio_id, since, until)


FRAME_PAGE = 10_000  # frames read at a time when a listing has no limit


def _check_grant(
    session: Session, studio_id: int, grant: str, field: str, doing: str, command: str
) -> None:
    """Refuse (422 at ``field``) what a studio may do only with an operator's ``grant``
    (a Studio column), saying which ``renderfarm studio COMMAND`` gives it."""
    studio = session.get(Studio, studio_id)
    if studio is None or not getattr(studio, grant):
        name = studio.name if studio is not None else studio_id
        raise InvalidRequest(
            field,
            f"studio {name!r} may not {doing}: an operator must allow them first "
            f"(renderfarm studio {command} {shlex.quote(str(name))} --allow)",
        )


def _chunk_holding(session: Session, job_id: int, frame: int) -> ChunkRow | None:
    """The job's row whose frames span ``frame`` (if any): the last starting at or before
    it, one index seek (a job's rows never overlap)."""
    chunk = session.exec(
        select(ChunkRow)
        .where(ChunkRow.job_id == job_id, col(ChunkRow.first_frame) <= frame)
        .order_by(col(ChunkRow.first_frame).desc())
        .limit(1)
    ).first()
    return chunk if chunk is not None and chunk.last_frame >= frame else None


def _frames_after(
    session: Session, job_id: int, after: int | None, state: str | None, skip: int
) -> Iterator[tuple[ChunkRow, int]]:
    """The job's frames after frame ``after`` (of chunks in ``state``, if given) with
    their rows, in ascending order, the rows read a page at a time by index seeks; the
    first ``skip`` frames skipped a row at a time."""
    first = None if after is None else _chunk_holding(session, job_id, after)
    rows: Iterable[ChunkRow] = () if first is None else (first,)
    if first is not None and state is not None and first.state != state:
        rows = ()
    cursor = after
    while True:
        for chunk in rows:
            frames = chunk.frame_range().within(
                FRAME_MIN if after is None else after + 1, FRAME_MAX
            )
            if skip >= len(frames):
                skip -= len(frames)
                continue
            yield from ((chunk, frame) for frame in frames[skip:])
            skip = 0
        query = select(ChunkRow).where(ChunkRow.job_id == job_id)
        if state is not None:
            query = query.where(ChunkRow.state == state)
        if cursor is not None:
            query = query.where(col(ChunkRow.first_frame) > cursor)
        page = session.exec(query.order_by(col(ChunkRow.first_frame)).limit(ROWS_PAGE)).all()
        if not page:
            return
        rows, cursor = page, page[-1].first_frame


ROWS_PAGE = 500  # chunk rows read at a time by a frame listing


def _last_errors(session: Session, chunks: Iterable[ChunkRow]) -> dict[int | None, str]:
    """Why each chunk's last attempt failed, for those whose last attempt did (a chunk
    queued again after a failure, or failed for good): by chunk id."""
    last = {chunk.id: chunk.attempts for chunk in chunks if chunk.failures and chunk.id}
    if not last:
        return {}
    rows = session.exec(
        select(AttemptRow.chunk_id, AttemptRow.number, AttemptRow.error).where(
            col(AttemptRow.chunk_id).in_(list(last)), AttemptRow.state == "failed"
        )
    )
    return {
        chunk_id: error
        for chunk_id, number, error in rows
        if error is not None and last.get(chunk_id) == number
    }


def _frame_status(
    job_id: int,
    chunk: ChunkRow | None,
    frame: int,
    result: FrameResultRow | None,
    error: str | None = None,
) -> FrameStatus:
    if result is not None:
        return FrameStatus(
            frame=frame,
            state="done",
            chunk_id=result.chunk_id,
            node=result.node,
            attempt=result.attempt,
            render_seconds=result.render_seconds,
            cpu_seconds=result.cpu_seconds,
            output=result.output,
            log=attempt_log_path(job_id, result.chunk_id, result.attempt),
            energy_joules=result.it_joules,
            energy_method=result.energy_method,
            facility_joules=result.facility_joules,
            cost=result.cost,
            co2_grams=result.co2_grams,
        )
    assert chunk is not None and chunk.id is not None
    return FrameStatus(
        frame=frame,
        state=chunk.state,
        chunk_id=chunk.id,
        node=chunk.node,
        attempt=chunk.attempts,
        render_seconds=None,
        cpu_seconds=None,
        output=None,
        log=attempt_log_path(job_id, chunk.id, chunk.attempts) if chunk.attempts else None,
        error=error,
    )


def _dependencies_of(session: Session, job_ids: list[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    if job_ids:
        for job_id, depends_on in session.connection().execute(_DEPENDENCIES, {"ids": job_ids}):
            found.setdefault(job_id, []).append(depends_on)
    return found


# The reads of a job, built once: building a statement costs more than running it.
_JOB = select(JobRow).where(col(JobRow.id) == bindparam("id"))
_DEPENDENCIES = (
    select(JobDependency.job_id, JobDependency.depends_on)
    .where(among(col(JobDependency.job_id), "ids"))
    .order_by(col(JobDependency.depends_on))
)


def studio_of_key(session: Session, key_hash: str) -> Studio | None:
    """The studio of an unrevoked key, by the key's hash."""
    return session.exec(
        select(Studio)
        .join(ApiKey, col(ApiKey.studio_id) == col(Studio.id))
        .where(ApiKey.key_hash == key_hash, col(ApiKey.revoked_at).is_(None))
    ).first()
