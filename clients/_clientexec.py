"""A warm ClientApp launcher for one SuperNode: ``python -m clients._clientexec``.

Started by :mod:`clients.deploy` (the trainer role's launcher, hence in ``clients/``); the
Flower-private calls it needs (the Runtime API's ``AcquireTask``, ``run_clientapp``) are in
:mod:`federation.flower_internals`, which refuses on another Flower version (the client then
runs Flower's own SuperExec: ``fedguard client --cold-start``).

Flower runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process, started
by its SuperExec. For fedguard that process spends 4-5 s of CPU importing torch, Opacus,
TenSEAL, SciPy and Flower before the handler runs (about 1 s of training on the vendored
subset), and a trainer pays it for every message of every round.

This launcher takes the SuperExec's place (the SuperNode runs with ``--isolation process``).
It imports those third-party modules once, then asks the SuperNode's Runtime API for work like
Flower's SuperExec does (``AcquireTask``) and runs each ClientApp task in a child made with
``fork()``: the child calls Flower's own ``run_clientapp`` with the task's token, so the app is
still loaded from the Flower app bundle, the message and context still travel through the
Runtime API, and the child exits when the task ends. Only third-party modules are preloaded;
fedguard's own packages are imported by the child from the bundle, as before.

Fork safety: the parent runs no torch operation and starts no thread of its own (numpy's and
SciPy's BLAS pools handle ``fork`` themselves). The parent exits when the process named by
``--parent-pid`` is gone (it also gets the parent-death signal from :mod:`clients.deploy`),
and stops its children with it; each forked child asks for the parent-death signal too, so
a killed launcher never leaves a ClientApp behind.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
import traceback
from types import FrameType

from federation.flower_internals import RuntimeTasks, run_clientapp_task
from federation.processes import die_with_parent

__all__: list[str] = []

PRELOAD = (
    "numpy", "scipy", "scipy.stats", "scipy.special", "torch", "torch.nn", "torch.nn.functional",
    "torch.utils.data", "opacus", "opacus.accountants", "opacus.accountants.analysis",
    "tenseal", "flwr.app", "flwr.clientapp", "flwr.supernode.runtime.run_clientapp",
)
"""Imported once in the parent; a module that is missing is simply skipped."""

_children: set[int] = set()  # forked ClientApp tasks still running


def _stop(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT (also the parent-death signal): stop the tasks and leave at once.

    Nothing here needs a graceful exit (the Runtime API client holds no state), and a prompt
    one matters: a ``fedguard client`` that died must not leave this process behind.
    """
    _terminate(_children)
    os._exit(0)


def _run_task(address: str, token: str) -> None:
    """In the forked child: run one ClientApp task with Flower's runtime, then exit."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        die_with_parent()
        run_clientapp_task(address, token, parent_pid=os.getppid())
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report, exit; never return into the parent loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients._clientexec")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--poll-interval", type=float, default=0.1)
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = time.monotonic()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    try:
        tasks = RuntimeTasks(args.runtime_api_address)
    except RuntimeError as exc:
        print(f"fedguard: {exc}; restart the client with --cold-start", flush=True)
        return 2
    print(f"fedguard: warm ClientApp launcher ready in {time.monotonic() - started:.1f}s "
          f"(runtime API {args.runtime_api_address})", flush=True)
    children = _children
    failures = 0
    try:
        while _alive(args.parent_pid):
            for pid in list(children):
                try:
                    done, _status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    children.discard(pid)
            try:
                token = tasks.acquire()
                failures = 0
            except Exception:  # noqa: BLE001 - the SuperNode is (re)starting: try again soon
                failures += 1
                if failures == 1:
                    # Tasks of a SuperNode that is gone cannot finish: their token and state
                    # lived in its memory. Flower's SuperExec dies with its SuperNode, and its
                    # ClientApps with it; here the children are stopped instead.
                    _terminate(children)
                time.sleep(min(0.2 * failures, 2.0))
                continue
            if token is not None:
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _run_task(args.runtime_api_address, token)
                children.add(pid)
                continue
            time.sleep(args.poll_interval)
    finally:
        _terminate(children)
        tasks.close()
    return 0


def _terminate(children: set[int]) -> None:
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    sys.exit(main())
