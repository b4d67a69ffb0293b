"""Whom a node runs studios' OpenJD template commands as (``renderfarm worker --run-as
USER[,USER...]``, ``RENDERFARM_RUN_AS``).

A template is a studio's code. With a job user, openjd-sessions runs its actions as that
user (``sudo -u USER -i``), so the node's own files are out of their reach by their
modes alone. The node checks it all once, as it starts (``equip_job_user``), and refuses
to start (``RunAsUnavailable``, which says what to do) where:

- the user does not exist, is root, or is the node's own user;
- the node cannot run a command as them the way openjd-sessions will (through sudo,
  without a password, in their login shell: a ``nologin`` shell fails here), or could
  not cancel it (a login shell that stays between sudo and the command, as dash does:
  give the user bash);
- the node runs as another user than root and is not in the job user's group, which
  shares each session's folders between the two (openjd-sessions gives a session's
  working directory to that group);
- one of the node's own files is open to the job user: its data folder, storage root
  and cache (folders made 0700 where missing), a ``.env`` beside it (its node token),
  a broker's Unix socket. A path is closed when some folder on the way to it does not
  let the user pass, or it does not let the user read it (or connect, for a socket).

The user's own group keeps any third user out of the sessions' folders. A session's
root cannot be listed (workers/renderers/openjd.py), so another session's folder is not
found by its name; but sessions running at once as one user could find each other's
through their processes (``/proc``), so a node may have several users (``--run-as
a,b``), each of its own group, and each running session holds one no other session
holds (``NodeJobUser.claim``).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import logging
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 30.0  # seconds the start-up check of sudo may take
PROBE_SLEEP = 3  # seconds the check's command runs, where this node cannot end it sooner
CLAIM_WAIT_SECONDS = 24 * 3600.0  # a session waits this long for a job user to be free


class RunAsUnavailable(Exception):
    """The node cannot run templates' commands as the user it was told to; ``str`` says
    why and what to do."""


@dataclass(frozen=True, slots=True)
class JobUser:
    """The unprivileged user a node runs templates' commands as: ``uid``, its groups'
    ids (``gids``), and ``group``, the one that shares each session's folders between
    the node and them: the user's own, so no third user shares them."""

    name: str
    uid: int
    group: str
    gids: frozenset[int]

    def can_open(self, path: Path) -> bool:
        """Whether this user can reach ``path`` and read it (a folder: list or enter it;
        a socket: connect to it), by the modes of it and of the folders above it."""
        path = path.resolve()
        for folder in reversed(path.parents):
            if not self._allowed(folder, stat.S_IXOTH):
                return False
        if path.is_dir():
            return self._allowed(path, stat.S_IROTH | stat.S_IXOTH)
        if path.is_socket():
            return self._allowed(path, stat.S_IWOTH)
        return self._allowed(path, stat.S_IROTH)

    def _allowed(self, path: Path, other_bits: int) -> bool:
        """Whether any of ``other_bits`` (as the ``other`` class's) is granted this user
        on ``path``: by the owner's bits if they own it, else the group's if it is one
        of theirs, else the others'."""
        info = path.stat()
        if info.st_uid == self.uid:
            return True  # an owner may give itself any mode
        if info.st_gid in self.gids:
            return bool(info.st_mode & (other_bits << 3))
        return bool(info.st_mode & other_bits)


class NodeJobUser:
    """Whom this node runs templates' commands as: one of its job users per running
    session (``claim``). The node says as it starts (``equip_job_user``), before its
    render slots fork; no users: as the node's own user.

    Sessions that run at once as one user can reach each other's folders (through the
    processes /proc shows to their own user), so each session claims a user no other
    session of the node holds: a lock (``flock``) on a file of the node's per user,
    which every slot's process shares and the kernel releases with its holder. Where
    all are held (fewer users than slots), the session waits for one."""

    def __init__(self) -> None:
        self.users: list[JobUser] = []
        self.locks: Path | None = None

    def use(self, users: Sequence[JobUser], locks: Path | None = None) -> None:
        self.users = list(users)
        self.locks = locks

    @property
    def user(self) -> JobUser | None:
        """The first job user (what the node names in its log); None without one."""
        return self.users[0] if self.users else None

    @contextlib.contextmanager
    def claim(self, wait: float = CLAIM_WAIT_SECONDS) -> Iterator[JobUser | None]:
        """A job user no other session of this node holds while this one runs; None
        without job users. ``RunAsUnavailable`` if none frees within ``wait`` s."""
        if not self.users:
            yield None
            return
        if len(self.users) == 1 or self.locks is None:
            yield self.users[0]
            return
        deadline = time.monotonic() + wait
        while True:
            for user in self.users:
                held = _try_lock(self.locks / f"{user.name}.lock")
                if held is None:
                    continue
                try:
                    yield user
                finally:
                    os.close(held)  # the lock goes with the descriptor
                return
            if time.monotonic() > deadline:
                names = ", ".join(u.name for u in self.users)
                raise RunAsUnavailable(f"every job user ({names}) runs a session")
            time.sleep(0.05)


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding ``path``'s exclusive lock, or None if it is held."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


JOB_USER = NodeJobUser()


def equip_job_user(
    run_as: str | None,
    folders: Iterable[Path] = (),
    files: Iterable[Path] = (),
    slots: int = 1,
) -> None:
    """Run templates' commands as the users ``run_as`` names (``a`` or ``a,b,c``), once
    each is checked (``find_job_user``) and the node's own ``folders`` and ``files``
    are closed to them (``close_private``); for None, as the node's own user. With
    fewer users than ``slots``, sessions wait for a user (the node says so at start).
    ``RunAsUnavailable`` says why not."""
    names = [name.strip() for name in (run_as or "").split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise RunAsUnavailable(f"a user is named twice in {run_as!r}")
    users = [find_job_user(name) for name in names]
    if len({user.group for user in users}) != len(users):
        raise RunAsUnavailable(
            "two of the job users share a group, which would share their sessions' "
            "folders: give each its own (useradd gives a user a group of its name)"
        )
    for user in users:
        close_private(user, folders, files)
        log.info("openjd: templates' commands run as %s (group %s)", user.name, user.group)
    if users and len(users) < slots:
        log.warning(
            "openjd: %d job user(s) for %d slots: a template's session waits for a user "
            "no other session holds (give as many users as slots: --run-as a,b,...)",
            len(users), slots,
        )  # fmt: skip
    locks = Path(tempfile.mkdtemp(prefix="renderfarm-run-as-")) if len(users) > 1 else None
    JOB_USER.use(users, locks)


def find_job_user(name: str, timeout: float = PROBE_TIMEOUT) -> JobUser:
    """``name`` as a job user, once the node has checked it can run commands as them."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RunAsUnavailable(
            f"no user {name!r} on this node (create one: useradd --system --no-create-home {name})"
        ) from None
    if entry.pw_uid == 0:
        raise RunAsUnavailable(f"{name!r} is root: templates must run as an unprivileged user")
    if entry.pw_uid == os.geteuid():
        raise RunAsUnavailable(f"{name!r} is the node's own user: templates would see its files")
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        raise RunAsUnavailable(f"the group of {name!r} ({entry.pw_gid}) has no name here") from None
    if os.geteuid() != 0 and entry.pw_gid not in os.getgroups():
        raise RunAsUnavailable(
            f"the node's user is not in group {group!r}, which shares session folders with "
            f"{name!r} (add it: usermod -aG {group} $(id -un), then start the node again)"
        )
    _probe_sudo(name, timeout)
    gids = frozenset(os.getgrouplist(name, entry.pw_gid))
    return JobUser(name, entry.pw_uid, group, gids)


def _probe_sudo(name: str, timeout: float) -> None:
    """Run a command the way openjd-sessions runs an action as ``name`` (sudo without a
    password, their login shell, setsid), and check that a cancel would reach it:
    openjd-sessions signals the process group of sudo's one child, which must be the
    command itself. A shell that stays between sudo and its ``-c`` command (dash, as
    ``/bin/sh``) leaves that group to the shell, and the command out of reach."""
    sudo, setsid = shutil.which("sudo"), shutil.which("setsid")
    if sudo is None or setsid is None:
        raise RunAsUnavailable(
            f"no {'sudo' if sudo is None else 'setsid'} on this node's PATH, which running "
            "as another user needs (Debian and Ubuntu: apt install sudo util-linux)"
        )
    probe = [sudo, "-n", "-u", name, "-i", setsid, "-w", "sleep", str(PROBE_SLEEP)]
    try:
        child = subprocess.Popen(
            probe, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
    except OSError as error:
        raise RunAsUnavailable(f"{shlex.join(probe)} did not start: {error}") from None
    try:
        reachable = _own_group_child(child)
        said, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise RunAsUnavailable(f"{shlex.join(probe)} did not end in {timeout:g} s") from None
    if reachable:  # it ran as the user, in its own group (and may have been ended early)
        return
    if child.returncode != 0:
        lines = said.strip().splitlines()
        why = lines[-1] if lines else f"exit code {child.returncode}"
        raise RunAsUnavailable(
            f"this node cannot run commands as {name!r} ({shlex.join(probe)}: {why}); let "
            "the node's user do so without a password in sudoers, and give the user a shell"
        )
    shell = pwd.getpwnam(name).pw_shell
    raise RunAsUnavailable(
        f"the login shell of {name!r} ({shell}) stays between sudo and the commands it "
        "runs, so cancelling a template could not stop them; give the user a shell that "
        f"runs a -c command in its place, such as bash (usermod --shell /bin/bash {name})"
    )


def _own_group_child(sudo: subprocess.Popen[str]) -> bool:
    """Whether sudo's child comes to lead a process group of its own (then it is the
    command, which setsid made so), ended early where this node may; False if sudo
    ends first or its child stays in sudo's group."""
    deadline = time.monotonic() + PROBE_SLEEP * 0.8
    while time.monotonic() < deadline and sudo.poll() is None:
        children = _children(sudo.pid)
        if len(children) == 1:
            try:
                group = os.getpgid(children[0])
            except ProcessLookupError:
                return False
            if group != sudo.pid:
                with contextlib.suppress(PermissionError, ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)  # root need not wait for it
                return True
        time.sleep(0.02)
    return False


def _children(pid: int) -> list[int]:
    """The children of process ``pid``, as Linux's /proc lists them."""
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in path.read_text().split()]
    return found


def close_private(user: JobUser, folders: Iterable[Path], files: Iterable[Path]) -> None:
    """Make the node's missing ``folders`` 0700 (as the node would make them, open, later
    on), and refuse any of its ``folders`` and ``files`` that ``user`` can open."""
    folders = list(folders)
    for folder in folders:
        if not folder.exists() and not folder.is_symlink():
            folder.mkdir(mode=0o700, parents=True)
    for path in [*folders, *files]:
        if path.exists() and user.can_open(path):
            mode = stat.filemode(path.stat().st_mode)
            raise RunAsUnavailable(
                f"{path} ({mode}) is open to {user.name}, who would read it: close it to "
                f"others (chmod go-rwx {shlex.quote(str(path))}), then start the node again"
            )
