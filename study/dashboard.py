"""``python -m study.dashboard``: optuna-dashboard on the project's storage, on loopback by default.

Equivalent to ``optuna-dashboard sqlite:///storage/studies.db``, with the project's storage
resolution (``--storage``, ``$STUDY_STORAGE``, the default SQLite file) and password masking.
"""

from __future__ import annotations

import sys

from study.lib.cli import ArgumentParser, add_storage_flag, fail
from study.lib.session import StudyError, existing_storage
from study.lib.storage import mask

PROG = "study.dashboard"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_storage_flag(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        fail(PROG, f"--port must be in 1..65535; got {args.port}")
    try:
        url, storage = existing_storage(args.storage)  # never creates an empty database to browse
    except StudyError as exc:
        fail(PROG, f"{exc}; run python -m study.run first or pass --storage")

    import optuna_dashboard

    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"optuna-dashboard on {mask(url)}: http://{host}:{args.port}/  (Ctrl-C to stop)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    except OSError as exc:
        fail(PROG, f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
