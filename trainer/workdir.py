"""The run's directory: checked before anything compiles, locked while a run uses it.

`prepare(workdir)` makes <workdir> and <workdir>/checkpoints and proves both
writable (one sentence naming the path otherwise). `Lock` keeps a second run
out of a workdir in use: <workdir>/run.lock holds the owner's host and pid,
created atomically; a lock whose process is gone (killed, crashed) is taken
over with a message. Only process 0 of a multi-process run locks.
"""

import json
import os
import pathlib
import socket
import tempfile
import time

LOCK_FILE = "run.lock"


def prepare(workdir) -> pathlib.Path:
  """<workdir> and its checkpoints/ directory, created and proven writable."""
  root = pathlib.Path(workdir).expanduser().absolute()
  for path in (root, root / "checkpoints"):
    if path.exists() and not path.is_dir():
      raise ValueError(f"--workdir {workdir!r}: {path} is a file, not a directory; "
                       "pass a directory (it is created if missing)")  # fmt: skip
    try:
      path.mkdir(parents=True, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
        pass
    except OSError as e:
      raise ValueError(
        f"--workdir {workdir!r}: cannot write to {path} ({e.strerror or e}); "
        "fix its permissions or free space, or choose another --workdir"
      ) from None
  return root


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class Lock:
  """An exclusive claim on a workdir for this process (re-entrant within it)."""

  def __init__(self, workdir):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self.held = False

  def _owner(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # half-written by a process that died while taking it

  def acquire(self, say=print):
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        owner = self._owner()
        if owner is None:
          continue  # released between our open and read
        same_host = owner.get("host") == mine["host"]
        if owner.get("pid") == mine["pid"] and same_host:
          self.held = True
          return
        if same_host and owner.get("pid") and _alive(owner["pid"]):
          since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
          raise ValueError(
            f"--workdir {str(self.path.parent)!r} is in use by process {owner['pid']} (since "
            f"{since}); wait for it to finish, stop it, or use another --workdir"
          )
        if not same_host and owner:
          raise ValueError(
            f"--workdir {str(self.path.parent)!r} is locked by process {owner.get('pid')} on "
            f"host {owner.get('host')!r}; if that run is gone, delete {self.path}"
          )
        say(f"workdir lock: taking over {self.path} from process {owner.get('pid')}, "
            "which is no longer running")  # fmt: skip
        self.path.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(mine, f)
      self.held = True
      return
    raise ValueError(f"could not take the workdir lock {self.path}; another run keeps taking it")

  def release(self):
    if not self.held:
      return
    self.held = False
    owner = self._owner()
    if owner and owner.get("pid") == os.getpid():
      self.path.unlink(missing_ok=True)
