"""``Uninterruptible``: SIGINT and SIGTERM wait for the end of the block, in real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

from shmstore._signals import Uninterruptible

PRELUDE = """
import os, signal, sys, time
from shmstore._signals import Uninterruptible
"""


def _run(body: str) -> subprocess.CompletedProcess[str]:
    """Run *body* in a new interpreter; its output and return code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_sigterm_inside_the_block_is_delivered_after_it() -> None:
    done = _run(
        """
        with Uninterruptible():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            print("block finished", flush=True)
        print("after the block", flush=True)
        """
    )
    assert done.stdout == "block finished\n"
    assert done.returncode == -signal.SIGTERM


def test_sigint_inside_the_block_raises_keyboard_interrupt_after_it() -> None:
    done = _run(
        """
        try:
            with Uninterruptible():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                print("block finished", flush=True)
            print("not reached", flush=True)
        except KeyboardInterrupt:
            print("interrupted after the block", flush=True)
        """
    )
    assert done.stdout == "block finished\ninterrupted after the block\n"
    assert done.returncode == 0


def test_signals_are_redelivered_in_the_order_received_once_each() -> None:
    done = _run(
        """
        got = []
        signal.signal(signal.SIGINT, lambda s, f: got.append("INT"))
        signal.signal(signal.SIGTERM, lambda s, f: got.append("TERM"))
        with Uninterruptible():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            print("inside", got, flush=True)
        print("after", got, flush=True)
        """
    )
    assert done.stdout == "inside []\nafter ['TERM', 'INT']\n", done.stderr


def test_nested_blocks_deliver_when_the_outermost_exits() -> None:
    done = _run(
        """
        got = []
        signal.signal(signal.SIGTERM, lambda s, f: got.append("TERM"))
        outer = Uninterruptible()
        with outer:
            with Uninterruptible():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
            with outer:  # the same instance, nested in itself
                pass
            print("inner done", got, flush=True)
        print("outer done", got, flush=True)
        """
    )
    assert done.stdout == "inner done []\nouter done ['TERM']\n", done.stderr


def test_an_exception_in_the_block_still_delivers_the_signal() -> None:
    done = _run(
        """
        got = []
        signal.signal(signal.SIGTERM, lambda s, f: got.append("TERM"))
        try:
            with Uninterruptible():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                raise ValueError("boom")
        except ValueError:
            print("caught", got, flush=True)
        """
    )
    assert done.stdout == "caught ['TERM']\n", done.stderr


def test_the_handlers_are_restored_after_the_block() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with Uninterruptible():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_outside_the_main_thread_it_does_nothing() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def body() -> None:
        with Uninterruptible():
            seen.append(signal.getsignal(signal.SIGTERM))

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert seen == [before]
