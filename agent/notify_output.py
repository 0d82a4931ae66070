"""Pass a notify command's output through to the agent's stdout and stderr, in whole lines.

The command's stdout and stderr are pipes that one daemon thread each copies, line by line, to
the agent's own stream of the same kind. Every copied line ends with a newline (one is added to
output that lacks it), and each line is one write, so command output never runs into a log line
of the agent. The bytes go out unchanged: never through the logging module, never into a log
record.
"""

from __future__ import annotations

import sys
import threading
from typing import IO, TextIO

# Longer lines are passed on in pieces of this size, each ended by a newline, so that a command
# that never writes a newline cannot make the agent hold unbounded output in memory.
MAX_LINE_BYTES = 64 * 1024

# Serialises the copiers' writes with each other; the logging handler writes each record in one
# call, so a whole line never interleaves with it either.
_write_lock = threading.Lock()


def forward_lines(pipe: IO[bytes], *, to_stderr: bool, name: str) -> threading.Thread:
    """Start a daemon thread that copies `pipe` to the agent's stderr (or stdout) in whole lines
    until end of file, then closes `pipe`. Return the thread."""
    thread = threading.Thread(
        target=_copy, args=(pipe, to_stderr), name=f"notify-output-{name}", daemon=True
    )
    thread.start()
    return thread


def _copy(pipe: IO[bytes], to_stderr: bool) -> None:
    try:
        while True:
            line = pipe.readline(MAX_LINE_BYTES)
            if not line:
                return
            if not line.endswith(b"\n"):
                line += b"\n"
            _write(sys.stderr if to_stderr else sys.stdout, line)
    except (OSError, ValueError):
        return  # the agent's stream is closed; nothing is left to show the output on
    finally:
        pipe.close()


def _write(stream: TextIO, line: bytes) -> None:
    with _write_lock:
        buffer = getattr(stream, "buffer", None)
        if buffer is None:  # a replaced stream without a byte layer, e.g. in a test harness
            stream.write(line.decode("utf-8", errors="replace"))
            stream.flush()
            return
        # Text written earlier through the text layer goes first.
        stream.flush()
        buffer.write(line)
        buffer.flush()
