"""The figures the docs print are the ones the committed runs make: the benchmark report re-made from its
run folders is the committed one, and the headline tables in README.md and docs/benchmarks.md are its."""

import re
from pathlib import Path

from casam.cli import main

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "docs" / "benchmarks"


def headline_tables(text: str, first_noise: str = "symmetric:0.2") -> list[str]:
    """Every markdown table in `text` whose header starts with `| method | FIRST_NOISE |` (a report's headline)."""
    pattern = rf"^\| method \| {re.escape(first_noise)} \|.*\n(?:\|.*\n)+"
    return [m.group(0) for m in re.finditer(pattern, text, flags=re.MULTILINE)]


def test_benchmark_report_is_remade_from_its_runs(tmp_path):
    (tmp_path / "runs").symlink_to(REPORT / "runs", target_is_directory=True)
    main(["bench", "--grid", str(REPO / "benchmarks" / "grid.yaml"), "--out", str(tmp_path), "--report-only", "--no-progress"])
    assert (tmp_path / "table.md").read_text() == (REPORT / "table.md").read_text()
    assert (tmp_path / "results.csv").read_text() == (REPORT / "results.csv").read_text()


def test_headline_tables_in_the_docs_are_the_reports():
    [report] = headline_tables((REPORT / "table.md").read_text())
    for doc in (REPO / "README.md", REPO / "docs" / "benchmarks.md"):
        tables = headline_tables(doc.read_text())
        assert tables, f"{doc.name} has no headline table"
        for table in tables:
            assert table == report, f"{doc.name}'s headline table differs from docs/benchmarks/table.md"


def test_thirty_epoch_table_in_the_readme_is_its_report():
    """Round 26's table (docs/table-30epochs, the table's regime in 30 epochs) as README.md prints it."""
    [headline] = headline_tables((REPO / "docs" / "table-30epochs" / "table.md").read_text(), "instance:0.4")
    [in_readme] = headline_tables((REPO / "README.md").read_text(), "instance:0.4")
    assert in_readme == headline
    assert "| casam+ce |" in headline and "| sam+ce |" in headline


def test_training_docs_heavy_noise_summary_is_what_casam_train_prints(tmp_path, capsys):
    """docs/training.md's 80 % digits run, re-run: the summary it shows (but the time and the folder) is the one
    casam train prints, heavy-noise line included."""
    text = (REPO / "docs" / "training.md").read_text()
    shown = text.split("--out /tmp/heavy --progress false\n", 1)[1].split("```", 1)[0].splitlines()
    capsys.readouterr()
    assert main(["train", "--dataset", "digits", "--train-subset", "1000", "--model", "mlp", "--epochs", "20", "--lr", "0.1",
                 "--noise", "symmetric:0.8", "--out", str(tmp_path / "heavy"), "--progress", "false"]) == 0
    printed = capsys.readouterr().out.splitlines()
    def kept(lines):
        return [line for line in lines if not line.startswith(("  time ", "  run folder "))]
    assert kept(printed[-len(shown):]) == kept(shown) and any(line.startswith("  heavy noise ") for line in shown)
