"""The docs: every figure rendered from its results file, every relative link resolving, a short README."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RENDERER = REPO / "benchmarks" / "render_tables.py"

spec = importlib.util.spec_from_file_location("render_tables", RENDERER)
rt = importlib.util.module_from_spec(spec)
sys.modules["render_tables"] = rt
spec.loader.exec_module(rt)

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The text without fenced blocks and inline code, where a bracket is not a link."""
    return CODE.sub("", FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_figure_is_rendered_from_its_results_file():
    out = subprocess.run([sys.executable, str(RENDERER), "--check"], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("doc", rt.docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in LINK.findall(_prose(doc.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


ROOTS = ("speechllm/", "adapters/", "tts/", "apps/", "data_recipes/", "benchmarks/", "tests/", "examples/",
         "docs/")
SCRIPT = re.compile(r"(?<![\w/.-])((?:benchmarks|examples|tests|data_recipes)/[\w/.-]+\.py)\b")


@pytest.mark.parametrize("doc", rt.docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_repository_paths_named_in_the_docs_exist(doc: Path):
    """`speechllm/...` and the like in prose, and every script a command runs, name real files."""
    text = doc.read_text()
    named = {t.rstrip(".,;:)") for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
             for t in span.split() if t.startswith(ROOTS) and not re.search(r"[<>*{}$]", t)}
    named |= set(SCRIPT.findall(text))
    missing = sorted(n for n in named if not (REPO / n).exists())
    assert not missing, f"{doc.relative_to(REPO)}: no such file in the repository: {', '.join(missing)}"


def test_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


DIARY = re.compile(r"\b(this|that|one|a|each|later|next|earlier|previous) (session|sitting)\b|"
                   r"\b(these|the) sessions\b|\bsessions?\s+\d+|\bstop \d+\b|RESOURCES\.md", re.I)


@pytest.mark.parametrize("doc", rt.docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_docs_speak_of_the_product_not_of_the_work(doc: Path):
    lines = [f"{i}: {line.strip()}" for i, line in enumerate(doc.read_text().splitlines(), 1)
             if DIARY.search(line)]
    assert not lines, f"{doc.relative_to(REPO)}: " + " | ".join(lines)


UNIT = r"(?:%|x|×|ms|s|h|min|dB|MB|GB|GB/s|tok/s|tokens/s)"
# a cell that starts with a measured-looking value: a decimal or a number with a unit (a bare integer,
# such as a limit's HTTP status or a count, is not one)
MEASURED = re.compile(r"\**[<>≈~]?[-+]?\d[\d,]*(?:\.\d+\s?" + UNIT + r"?|\s?" + UNIT + r")\**(?=$|[\s,;(/*])")
MARKED_TABLE = re.compile(r"^<!-- table: [\w.-]+ -->\n.*?^<!-- /table -->$", re.M | re.S)
MARKED_FIGURE = re.compile(r"<!-- figure: [\w.-]+ -->.*?<!-- /figure -->")


def hand_written_rows(text: str) -> list[str]:
    """Table rows outside the renderer's markers with two or more cells that start with a measurement:
    a table of figures typed by hand. (Figures inside ``<!-- figure -->`` markers are rendered.)"""
    text = MARKED_FIGURE.sub("FIGURE", MARKED_TABLE.sub("", FENCE.sub("", text)))
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|", line.strip()):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if sum(bool(MEASURED.match(c)) for c in cells) >= 2:
                rows.append(line)
    return rows


@pytest.mark.parametrize("doc", rt.docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_table_of_figures_is_written_by_hand(doc: Path):
    rows = hand_written_rows(doc.read_text())
    assert not rows, (f"{doc.relative_to(REPO)}: a table of figures outside table markers (render it from "
                      f"benchmarks/results through benchmarks/doc_tables.py): " + " | ".join(rows[:3]))


def test_the_hand_written_table_check_tells_figures_from_settings():
    figures = "| weights | tokens/s | vs fp32 |\n|---|---:|---:|\n| int4 | 2.5 | 2.54x |\n"
    timing = "| WER of a pair | 24 s (pure Python) | 0.25 s, same run |\n"
    settings = ("| limit | default | flag | status |\n|---|---|---|---|\n"
                "| duration | 600 s (`MAX`) | `--max-seconds` | 413 |\n| upload | 25 MiB | `--mb` | 413 |\n")
    rendered = "<!-- table: t -->\n" + figures + "<!-- /table -->\n"
    inline = "| a | <!-- figure: f -->1.5 %<!-- /figure --> | <!-- figure: g -->2 ms<!-- /figure --> |\n"
    assert hand_written_rows(figures) == ["| int4 | 2.5 | 2.54x |"]
    assert len(hand_written_rows(timing)) == 1
    assert hand_written_rows(settings) == hand_written_rows(rendered) == hand_written_rows(inline) == []


# ---- the renderer itself, on a doc and a results file of its own -------------------------------

@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    rows = [{"name": "a", "wer": 0.1234, "by": {"x": 2.0}}, {"name": "b", "wer": 0.5, "by": {"x": 3}}]
    (tmp_path / "benchmarks" / "results" / "r.json").write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(rt, "RESULTS", tmp_path / "benchmarks" / "results")
    tables = {"t": rt.Table("r.json", (rt.Column("system", "name"), rt.Column("WER", "wer", rt.pct(), True),
                                       rt.Column("x", "by.x", rt.fixed(1), True)), rows=lambda d: d["rows"])}
    figures = {"f": rt.Figure("r.json", lambda d: rt.one(d["rows"], name="b")["wer"], rt.pct(1))}
    return tmp_path, tables, figures


def test_render_writes_tables_and_figures_and_check_catches_drift(sandbox):
    root, tables, figures = sandbox
    doc = root / "README.md"
    doc.write_text("Intro, WER <!-- figure: f -->9 %<!-- /figure --> here.\n\n"
                   "<!-- table: t -->\n| stale |\n<!-- /table -->\n\nEnd.\n")
    assert rt.run(check=True, root=root, tables=tables, figures=figures, out=sys.stderr) == 1
    assert "| stale |" in doc.read_text()  # --check changes nothing
    assert rt.run(check=False, root=root, tables=tables, figures=figures, out=sys.stderr) == 0
    assert doc.read_text() == (
        "Intro, WER <!-- figure: f -->50.0 %<!-- /figure --> here.\n\n<!-- table: t -->\n"
        "| system | WER | x |\n|---|---:|---:|\n| a | 12.34 % | 2.0 |\n| b | 50.00 % | 3.0 |\n"
        "<!-- /table -->\n\nEnd.\n")
    assert rt.run(check=True, root=root, tables=tables, figures=figures, out=sys.stderr) == 0
    doc.write_text(doc.read_text().replace("12.34 %", "12.00 %"))  # a hand edit is drift
    assert rt.run(check=True, root=root, tables=tables, figures=figures, out=sys.stderr) == 1


def test_unused_declarations_fail_the_check(sandbox):
    root, tables, figures = sandbox
    (root / "README.md").write_text("<!-- table: t -->\n<!-- /table -->\n")
    rt.run(check=False, root=root, tables=tables, figures=figures, out=sys.stderr)
    assert rt.run(check=True, root=root, tables=tables, figures=figures, out=sys.stderr) == 1  # 'f' unused


@pytest.mark.parametrize("text, message", [
    ("<!-- table: nope -->\n<!-- /table -->\n", "README.md:1: unknown table 'nope'"),
    ("x\n<!-- table: t -->\n| a |\n", "README.md: a table or figure marker is not closed"),
    ("<!-- figure: f -->1 %\n", "not closed"),
])
def test_bad_markers_are_one_line_errors(sandbox, text, message):
    root, tables, figures = sandbox
    (root / "README.md").write_text(text)
    with pytest.raises(rt.RenderError, match=re.escape(message)):
        rt.run(check=True, root=root, tables=tables, figures=figures, out=sys.stderr)


def test_a_missing_results_field_names_the_doc_and_the_field(sandbox):
    root, _, figures = sandbox
    tables = {"t": rt.Table("r.json", (rt.Column("?", "missing"),), rows=lambda d: d["rows"])}
    (root / "README.md").write_text("<!-- table: t -->\n<!-- /table -->\n")
    with pytest.raises(rt.RenderError, match=r"README.md:1: table 't': no 'missing'"):
        rt.run(check=False, root=root, tables=tables, figures={}, out=sys.stderr)
