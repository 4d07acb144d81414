"""python -m analysis.report on real studies: files, importance tables, a real browser, the dashboard
(only with --to-dashboard: without it the storage is left byte-identical)."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import cli, require
from tests.test_dashboard import get_json, running_dashboard

optuna.logging.set_verbosity(optuna.logging.WARNING)
EVALUATORS = ("fANOVA", "PED-ANOVA", "MDI")
CHROMIUM = Path("/usr/bin/chromium")


CELL = re.compile(r"(\d\.\d\d) \[(\d\.\d\d), (\d\.\d\d)\]")


def importance_tables(markdown: str) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """target -> parameter -> [(median, low, high) for fANOVA, PED-ANOVA, MDI], parsed from
    report.md; a declined target maps to the reason it gives."""
    tables = {}
    for target, body in re.findall(
        r"### Target: (.*?) \(\d+ trials?[^)]*\)\n\n(.*?)(?=\n### |\n## )", markdown, re.S
    ):
        if body.startswith("Not shown: "):
            tables[target] = body.split("\n")[0]
            continue
        lines = body.splitlines()
        assert [c.strip() for c in lines[0].strip("|").split("|")] == ["parameter", *EVALUATORS]
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|")]
        tables[target] = {r[0]: [tuple(map(float, CELL.fullmatch(x).groups())) for x in r[1:]] for r in rows}
    return tables


@pytest.fixture(scope="module")
def reported(small_studies, tmp_path_factory):
    """The report of a 16-trial digits search 's16' (median pruner, so some trials are pruned; 16
    trials, so that importance has the 12 trials it needs for 6 searched parameters), in a
    copy of the shared storage that also holds the quick grid 'g' of digits, published into the
    dashboard (--to-dashboard)."""
    folder = tmp_path_factory.mktemp("report")
    shutil.copy(small_studies.removeprefix("sqlite:///"), folder / "s.db")
    url = f"sqlite:///{folder / 's.db'}"
    run = cli("study.run", "--dataset", "digits", "--space", "quick", "--budget", "quick", "--n-trials", "16",
              "--pruner", "median", "--storage", url, "--study-name", "s16", "--quiet")  # fmt: skip
    assert run.returncode == 0, run.stderr
    proc = cli("analysis.report", "--study", "s16", "--storage", url, "--out", str(folder / "out"), "--quiet",
               "--to-dashboard")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return url, folder / "out", proc


def test_report_writes_both_files_with_every_parameter_in_every_importance_table(reported):
    url, out, proc = reported
    assert (out / "index.html").is_file() and (out / "report.md").is_file()
    assert str(out / "index.html") in proc.stdout
    assert "the summary note and 3 figure(s) are saved in the study" in proc.stdout
    markdown = (out / "report.md").read_text()
    study = optuna.load_study(study_name="s16", storage=url)
    # how many finish depends on the CPU's float trajectory (3 on one machine, 5 on another): at least one
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) >= 1
    searched = {name for t in study.trials for name in t.distributions}
    assert searched == {"accumulation_steps", "lr_scaling", "base_lr", "dropout", "drop_path", "weight_decay"}

    tables = importance_tables(markdown)
    assert list(tables) == [
        "val_accuracy (objective)",
        "generalization_gap",
        "wall_seconds",
        *(t for t in tables if " at epoch " in t),  # the rung, when the median pruner stopped trials early
    ]
    shown = {target: table for target, table in tables.items() if isinstance(table, dict)}
    assert shown, tables  # 16 trials: at least one target has the evidence importance needs
    for target, table in tables.items():
        if target not in shown:
            assert table.startswith("Not shown: "), target
            continue
        assert set(table) == searched, target
        for cells in table.values():  # median inside its 90% interval, normalized scores
            assert all(0 <= low <= median <= high <= 1 for median, low, high in cells), target
    assert re.search(r"(stands? out: |No parameter stands out: )", markdown)
    # the summary counts the study's trials by state, and names its best trial
    for state in {t.state for t in study.trials}:
        n = sum(t.state == state for t in study.trials)
        assert f"| {state.name.lower()} | {n} |" in markdown
    assert f"Best trial: {study.best_trial.number} " in markdown
    # a grid of the same dataset is in the storage: the verdict and the comparison are there
    assert re.search(r"Verdict: (overfitting|under-training|both|neither|inconclusive)\.", markdown)
    assert "### Search against grid g" in markdown
    # the grid measured the gradient noise scale: the report places the batches on it
    assert "### g: the gradient noise scale" in markdown
    assert re.search(r"effective batches are, at epoch 1: .*(below|near|above)", markdown)
    for name in ("importance", "history", "intermediate", "slice", "parallel", "compare-g", "noise-g"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"figures/{name}.png" in markdown


def test_html_report_is_self_contained(reported):
    _, out, _ = reported
    page = (out / "index.html").read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(https?:)?//", page), (
        "fetches from the network"
    )
    assert page.count('src="data:image/png;base64,') >= 5
    assert "Plotly" in page  # plotly.js inline, for the interactive figures


def test_report_is_reproducible(reported, tmp_path):
    """Seeded evaluators: the same study gives the same importance tables."""
    url, out, _ = reported
    again = cli("analysis.report", "--study", "s16", "--storage", url, "--out", str(tmp_path), "--quiet",
                "--no-interactive")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert importance_tables((tmp_path / "report.md").read_text()) == importance_tables(
        (out / "report.md").read_text()
    )
    assert "Plotly" not in (tmp_path / "index.html").read_text()


def test_without_to_dashboard_the_report_leaves_the_database_byte_identical(reported, tmp_path):
    url, _, _ = reported
    db = Path(url.removeprefix("sqlite:///"))
    wal = db.with_name(db.name + "-wal")  # SQLite in WAL mode: a write would land here first

    def content() -> tuple[str, bytes]:  # an absent WAL and an empty one hold the same: nothing
        return hashlib.sha256(db.read_bytes()).hexdigest(), wal.read_bytes() if wal.exists() else b""

    with closing(sqlite3.connect(db)) as connection:  # earlier writes into the main file, the WAL emptied
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = content()
    proc = cli("analysis.report", "--study", "s16", "--storage", url, "--out", str(tmp_path / "r"), "--quiet",
               "--no-interactive")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dashboard:" not in proc.stdout
    assert content() == before
    assert (tmp_path / "r" / "index.html").is_file()


def test_html_embeds_the_very_png_files_written_beside_the_markdown(reported):
    _, out, _ = reported
    page = (out / "index.html").read_text()
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) >= 6
    for png in pngs:
        assert f'src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"' in page, png.name


def test_html_report_opens_in_headless_chromium(reported):
    require(CHROMIUM.is_file(), "Chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    _, out, _ = reported
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "index.html").as_uri(), wait_until="load")
            figure = page.locator("#importance-figure img")
            figure.scroll_into_view_if_needed()
            assert figure.is_visible()
            width, height = figure.evaluate("img => [img.naturalWidth, img.clientHeight]")
            assert width > 300 and height > 100  # the PNG decoded and is laid out
            # the interactive version draws with the inline plotly.js, offline
            page.locator("#importance-figure + details summary").click()
            page.wait_for_selector("#importance-plotly .main-svg", state="visible", timeout=20_000)
            assert page.evaluate("typeof window.Plotly") == "object"
        finally:
            browser.close()
    assert errors == []


def test_dashboard_serves_the_reports_note_and_figures(reported):
    url, _, _ = reported
    with running_dashboard(url) as (base, server):
        studies = get_json(f"{base}/api/studies", server)["study_summaries"]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == "s16")
        detail = get_json(f"{base}/api/studies/{study_id}?after=0", server)
    assert detail["note"]["body"].startswith("# Report summary: s16\n")
    assert "## Parameter importance" in detail["note"]["body"]
    assert "| accumulation_steps |" in detail["note"]["body"]  # the objective's importance table
    assert {g["id"] for g in detail["plotly_graph_objects"]} == {
        "report-importance",
        "report-history",
        "report-parallel",
    }


@pytest.mark.slow
def test_two_objective_study_runs_without_pruning_and_the_report_lists_its_pareto_front(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    run = cli("study.run", "--dataset", "digits", "--space", "quick", "--budget", "quick", "--n-trials", "4",
              "--objectives", "accuracy,time", "--storage", url, "--quiet")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "pruner none, objectives accuracy,time" in run.stdout
    study = optuna.load_study(study_name="digits-quick-quick-time", storage=url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "train_seconds"]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4  # nothing pruned
    for t in study.trials:
        assert t.values == [t.user_attrs["val_accuracy"], t.user_attrs["train_seconds"]]
        assert t.intermediate_values == {}
    front = sorted(t.number for t in study.best_trials)
    assert f"Pareto front (val acc up, train seconds down): {len(front)} trial(s)" in run.stdout
    single = cli("study.run", "--dataset", "digits", "--space", "quick", "--budget", "quick", "--n-trials", "1",
                 "--study-name", study.study_name, "--storage", url)  # fmt: skip
    assert single.returncode == 2 and "was created with objectives=accuracy,time" in single.stderr

    out = tmp_path / "report"
    report = cli(
        "analysis.report", "--study", study.study_name, "--storage", url, "--out", str(out), "--quiet"
    )
    assert report.returncode == 0, report.stderr
    markdown = (out / "report.md").read_text()
    assert f"Pareto-optimal trials ({len(front)})" in markdown
    pareto_table = markdown.split("Pareto-optimal trials", 1)[1].split("\n\n")[1]
    listed = sorted(int(line.split("|")[1]) for line in pareto_table.splitlines()[2:])
    assert listed == front
    assert list(importance_tables(markdown)) == [
        "val_accuracy (objective)",
        "train_seconds (objective)",
        "generalization_gap",
        "wall_seconds",
    ]  # no rung: a two-objective study prunes nothing


def test_two_objective_mode_refuses_a_pruner_before_touching_the_storage(tmp_path):
    db = tmp_path / "s.db"
    proc = cli("study.run", "--dataset", "digits", "--space", "quick", "--objectives", "accuracy,time",
               "--pruner", "hyperband", "--storage", f"sqlite:///{db}")  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "Optuna prunes only single-objective studies" in proc.stderr
    assert not db.exists()
    help_text = cli("study.run", "--help").stdout
    assert "WITHOUT pruning" in help_text


@pytest.mark.parametrize("case", ["unknown study", "out is under a file", "out is a file"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(reported, tmp_path, case):
    url, _, _ = reported
    db = Path(url.removeprefix("sqlite:///"))
    before = db.read_bytes()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    study, out = {
        "unknown study": ("no-such-study", tmp_path / "out"),
        "out is under a file": ("s16", blocker / "out"),
        "out is a file": ("s16", blocker),
    }[case]
    proc = cli("analysis.report", "--study", study, "--storage", url, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("analysis.report: error: ")
    assert (
        "no study 'no-such-study'" if case == "unknown study" else "cannot write the report"
    ) in proc.stderr
    assert db.read_bytes() == before  # no note saved
    assert not (tmp_path / "out").exists() and blocker.read_text() == "not a folder"


def test_report_of_a_study_without_completed_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="young", storage=url, direction="maximize")
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda t: t.suggest_float("x", 0, 1) * float("nan"), n_trials=1)  # NaN -> FAIL
    proc = cli("analysis.report", "--study", "young", "--storage", url, "--out", str(tmp_path / "r"), "--quiet",
               "--to-dashboard")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "| fail | 1 |" in markdown and "No completed trial yet." in markdown
    assert "0 trial(s) with a finite val_accuracy (objective): importance needs at least 10" in markdown
    assert "No figures" in markdown
    assert "0 figure(s)" in proc.stdout
