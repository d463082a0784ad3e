"""Many ``ham-bench`` command lines through ``ham_bench.cli.main`` in one process (see tests/cli_runs.py).

Reads a JSON list of ``{"args": [...], "cwd": dir}`` from stdin; for each, sets ``sys.argv``, changes
to ``cwd``, calls ``main()`` with stderr captured, and prints one JSON line with the exit status and
stderr. An exception escaping ``main()`` is reported as a traceback, as Python would print it.
"""

import contextlib
import io
import json
import os
import sys
import traceback

from ham_bench import cli


def run(case: dict) -> dict:
    os.chdir(case["cwd"])
    sys.argv = ["ham-bench", *case["args"]]
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # noqa: BLE001 - what Python would print as an uncaught exception
            traceback.print_exc(file=err)
            code = 1
    return {"case": case["args"], "code": code, "stderr": err.getvalue()}


def main() -> None:
    for case in json.loads(sys.stdin.read()):
        print(json.dumps(run(case)), flush=True)


if __name__ == "__main__":
    main()
