"""SIGTERM / SIGINT: stop safely, and always within seconds.

While training (`phase` "train" or "save"), the first signal asks the loop to
save the step it is on and exit (preemption); the same command resumes. If that
has not happened within `timeout_s` (a save blocked on I/O, data that never
comes), the process exits without it. During setup (data checks, restore,
compile, up to the first step's compile) nothing new exists to save, so the process
exits at once. A second
signal always exits at once. Checkpoints commit atomically, so an exit at any
point leaves the last committed step intact.

Python runs signal handlers only between bytecodes of the main thread, and the
main thread may sit for minutes inside XLA or a blocked write; so the handlers
only record the signal, and a watcher thread, woken through
`signal.set_wakeup_fd`, decides and exits.
"""

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopper:
  """Context manager owning SIGTERM/SIGINT for a run.

  phase: "setup" | "train" | "save" (set by the loop). last_committed() -> str
  describes the checkpoint a forced exit leaves; on_exit() runs before it
  (releases the workdir lock).
  """

  def __init__(self, timeout_s: float, last_committed, on_exit=lambda: None):
    self.timeout_s, self.last_committed, self.on_exit = timeout_s, last_committed, on_exit
    self.phase = "setup"
    self.requested = False  # the loop saves and stops after this step
    self.signal_name = ""
    self._count = 0
    self._previous = {}
    self._pipe = None
    self._done = threading.Event()  # set when the run hands the signals back

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # signals reach only the main thread's handlers
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._pipe = (read_fd, write_fd)
    for sig in SIGNALS:
      self._previous[sig] = signal.signal(sig, lambda signum, frame: None)
    self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=self._watch, name="stopper", daemon=True).start()
    return self

  def __exit__(self, *exc):
    if self._pipe is None:
      return False
    signal.set_wakeup_fd(self._previous_wakeup)
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    os.close(self._pipe[1])  # ends the watcher
    self._pipe = None
    self._done.set()
    return False

  def _watch(self):
    read_fd = self._pipe[0]
    while True:
      try:
        data = os.read(read_fd, 64)
      except OSError:
        return
      if not data:
        os.close(read_fd)
        return
      for signum in data:
        if signum in SIGNALS:
          self._signal(signal.Signals(signum))

  def _signal(self, sig):
    self._count += 1
    if self._count > 1:
      self._exit(sig, f"{sig.name} again: exiting now")
    if self.phase == "setup":
      self._exit(sig, f"{sig.name} during setup: exiting (nothing trained yet to save)")
    self.signal_name = sig.name  # before `requested`: the loop reads both once it is set
    self.requested = True
    _say(f"{sig.name}: saving at the end of this step, then exiting (again: exit at once)")
    threading.Thread(target=self._deadline, args=(sig,), daemon=True).start()

  def _deadline(self, sig):
    if self._done.wait(self.timeout_s):
      return  # the run ended (saved and returned) in time
    self._exit(sig, f"{sig.name}: the save did not finish within "
                    f"checkpoint.stop_timeout_s={self.timeout_s:g}; exiting without it")  # fmt: skip

  def _exit(self, sig, message: str):
    try:
      _say(f"{message}; the last committed checkpoint is {self.last_committed()}; "
           "the same command resumes from it")  # fmt: skip
      self.on_exit()
    finally:
      os._exit(128 + int(sig))


def _say(message: str):
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
