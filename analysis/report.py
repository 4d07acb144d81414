"""``python -m analysis.report --study NAME``: a study's report, as files, and in optuna-dashboard on request.

Writes ``index.html`` (self-contained: figures embedded, plotly.js inline, opens offline) and
``report.md`` (figures beside it under ``figures/``, each PNG written once) to ``--out`` (default
``reports/NAME``). What the report holds is ``analysis.lib.report``: summary, edge warnings,
parameter importance, figures, and the verdict and comparison with a grid study of the same
dataset.

The storage is only read, unless ``--to-dashboard`` is given: then the summary note and the key
figures are saved into the study (``analysis.lib.publish``), so the dashboard shows them next to the
trials.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import optuna

from analysis.lib import document, publish
from analysis.lib import report as sections
from analysis.lib.importance import BOOTSTRAP
from study.lib.cli import ArgumentParser, add_quiet_flag, add_storage_flag, fail
from study.lib.session import StudyError, load_studies
from study.lib.storage import StorageError, resolve_url

PROG = "analysis.report"


def check_writable(out: Path) -> None:
    """Refuse an --out where the report cannot be written, before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "figures").mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise StudyError(f"cannot write the report to {out}: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--study", required=True, help="study name")
    add_storage_flag(parser)
    parser.add_argument("--out", help="output folder (default: reports/STUDY)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the bootstrap and of the fANOVA and MDI forests (default: 0)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=BOOTSTRAP,
        metavar="B",
        help=f"bootstrap resamples of the trials per importance target (default: {BOOTSTRAP}; fewer is faster, "
        "more gives steadier intervals)",
    )
    parser.add_argument(
        "--to-dashboard",
        action="store_true",
        help="also save the summary note and key figures into the study in the storage, for "
        "optuna-dashboard (without it the storage is only read)",
    )
    parser.add_argument(
        "--no-interactive",
        action="store_true",
        help="PNG figures only (index.html without plotly.js, ~4 MB smaller)",
    )
    add_quiet_flag(parser, help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.bootstrap < 2:
        fail(PROG, f"--bootstrap must be >= 2; got {args.bootstrap}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out or f"reports/{args.study}")
    log = (lambda _: None) if args.quiet else (lambda m: print(f"{PROG}: {m}", file=sys.stderr, flush=True))
    try:
        url = resolve_url(args.storage)
        (study,) = load_studies([args.study], url)
        check_writable(out)
    except (StorageError, StudyError) as exc:
        fail(PROG, str(exc))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        report = sections.build(study, url, out, seed=args.seed, resamples=args.bootstrap, log=log)
        try:
            written = document.write(report.document, out, interactive=not args.no_interactive)
        except OSError as exc:
            fail(PROG, f"cannot write the report to {out}: {exc.strerror or exc}")
        saved = publish.to_dashboard(study, report.document, report.note) if args.to_dashboard else None
    print(f"report: {out / 'index.html'}")
    print(f"        {out / 'report.md'} ({len(written) - 2} figures under {out / 'figures'})")
    if saved is not None:
        print(f"dashboard: the summary note and {saved} figure(s) are saved in the study")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
