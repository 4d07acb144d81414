"""``python -m analysis.noise_scale``: the gradient noise scale of a grid run with ``--noise-scale``.

Prints B_simple per epoch (pooled over the grid's runs) and the sentence that says which effective
batches lie below, near or above it (``analysis.lib.noise_scale``); with ``--out`` writes ``noise-scale.md``,
``noise-scale.json`` and ``figures/noise-scale.png`` there. Reads the storage only.
"""

from __future__ import annotations

from pathlib import Path

from analysis.lib import noise_scale as noise
from study.lib import records
from study.lib.cli import ArgumentParser, add_storage_flag, fail, render_table
from study.lib.session import StudyError, load_studies
from study.lib.storage import StorageError

PROG = "analysis.noise_scale"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog=PROG,
        description="The gradient noise scale of a grid study run with --noise-scale: B_simple per epoch, "
        "and which effective batches lie below, near or above it.",
    )
    parser.add_argument("--study", required=True, help="a grid study whose runs measured the noise scale")
    parser.add_argument("--search", help="a search study: its best trials' effective batches are drawn too")
    parser.add_argument("--out", help="write noise-scale.md, noise-scale.json and the figure here")
    add_storage_flag(parser)
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        fail(PROG, f"--out {args.out} is a file; give a folder")
    try:
        studies = load_studies([args.study] + ([args.search] if args.search else []), args.storage)
    except (StorageError, StudyError) as exc:
        fail(PROG, str(exc))
    grid, search = studies[0], studies[1] if args.search else None
    runs = noise.noise_runs(grid)
    if not runs:
        fail(
            PROG,
            f"study {args.study!r} has no finished run that measured the noise scale (study.grid --noise-scale)",
        )
    summary = noise.summarize(
        grid.user_attrs.get(records.DATASET, args.study),
        runs,
        search,
        grid.user_attrs.get(records.EPOCH_POINTS),
    )
    print(summary["sentence"])
    print()
    print(render_table(noise.TABLE_HEADER, noise.table_rows(summary)), end="")
    if args.out:
        for path in noise.write(summary, runs, Path(args.out)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
