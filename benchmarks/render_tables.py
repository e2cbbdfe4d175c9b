"""Write every measured figure in the docs from benchmarks/results/*.json, so none can drift from its run.

    python benchmarks/render_tables.py            # rewrite the marked tables and figures in place
    python benchmarks/render_tables.py --check    # exit 1, naming each one, where a doc differs

A table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``, each on a line of its own;
a single figure sits inline between ``<!-- figure: NAME -->`` and ``<!-- /figure -->``. NAME is
declared in TABLES or FIGURES in benchmarks/doc_tables.py: the results file it reads, the rows it
takes and how each column is written. What lies between the markers is never edited by hand. The docs
are README.md, docs/*.md and benchmarks/README.md; a declared name that no doc uses is an error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechllm.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOC_PATTERNS = ("README.md", "docs/*.md", "benchmarks/README.md")

TABLE = re.compile(r"^<!-- table: (?P<name>[\w.-]+) -->\n(?P<body>.*?)^<!-- /table -->$", re.M | re.S)
FIGURE = re.compile(r"<!-- figure: (?P<name>[\w.-]+) -->(?P<body>.*?)<!-- /figure -->")
OPENERS = re.compile(r"<!-- (table|figure): ([^ ]*) -->")


class RenderError(Exception):
    """A doc, a declaration or a results file that cannot give its figures; the message is one line."""


# ---- formats ---------------------------------------------------------------------------------

def pct(digits: int = 2) -> Callable[[float], str]:
    """A fraction as a percentage: 0.2227 -> '22.27 %'."""
    return lambda x: f"{x * 100:.{digits}f} %"


def fixed(digits: int, suffix: str = "") -> Callable[[float], str]:
    return lambda x: f"{x:.{digits}f}{suffix}"


def millions(x: float) -> str:
    return f"{x / 1e6:.2f} M"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def text(x: Any) -> str:
    return str(x)


def bold(fmt: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda x: f"**{fmt(x)}**"


# ---- reading results -------------------------------------------------------------------------

def get(obj: Any, path: str) -> Any:
    """``obj`` followed along a dotted path of keys (list items by index): 'passage.accuracy'."""
    for part in path.split("."):
        try:
            obj = obj[int(part)] if isinstance(obj, list) else obj[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise RenderError(f"no {path!r} (at {part!r})") from None
    return obj


def one(rows: Sequence[dict], **match: Any) -> dict:
    """The single row whose fields equal ``match``."""
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise RenderError(f"{len(found)} rows match {match}, expected 1")
    return found[0]


def load(names: str | tuple[str, ...]) -> Any:
    """A results file's JSON; for a tuple of names, the list of theirs."""
    if isinstance(names, tuple):
        return [load(name) for name in names]
    path = RESULTS / names
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RenderError(f"{path.relative_to(REPO)}: no such file") from None
    except json.JSONDecodeError as e:
        raise RenderError(f"{path.relative_to(REPO)}: not valid JSON (line {e.lineno})") from None


# ---- declarations ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    header: str
    value: str | Callable[[dict], Any]  # a dotted path in the row, or a function of the row
    fmt: Callable[[Any], str] = text
    numeric: bool = False  # right-aligned

    def cell(self, row: dict) -> str:
        value = get(row, self.value) if isinstance(self.value, str) else self.value(row)
        return "–" if value is None else self.fmt(value)


@dataclass(frozen=True)
class Table:
    results: str | tuple[str, ...]  # a file in benchmarks/results/ (several: rows() gets a list)
    columns: tuple[Column, ...]
    rows: Callable[[Any], Sequence[dict]] = lambda data: data  # the rows, from the file's JSON

    def render(self) -> str:
        rows = self.rows(load(self.results))
        lines = ["| " + " | ".join(c.header for c in self.columns) + " |",
                 "|" + "|".join("---:" if c.numeric else "---" for c in self.columns) + "|"]
        lines += ["| " + " | ".join(c.cell(r) for c in self.columns) + " |" for r in rows]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Figure:
    results: str | tuple[str, ...]
    value: Callable[[Any], Any]  # the figure, from the file's JSON
    fmt: Callable[[Any], str] = text

    def render(self) -> str:
        return self.fmt(self.value(load(self.results)))


def labelled(labels: dict[str, str], key: str) -> Callable[[dict], str]:
    """A row's label from its ``key`` field; a row without a label is an error, not a blank."""
    def label(row: dict) -> str:
        if get(row, key) not in labels:
            raise RenderError(f"no label for {key} {get(row, key)!r}")
        return labels[get(row, key)]
    return label


def in_order(key: str, order: Sequence[str]) -> Callable[[Sequence[dict]], list[dict]]:
    """The rows whose ``key`` is in ``order``, in that order (each exactly once)."""
    return lambda rows: [one(rows, **{key: k}) for k in order]


# ---- rendering -------------------------------------------------------------------------------

def docs(root: Path = REPO) -> list[Path]:
    return sorted({p for pattern in DOC_PATTERNS for p in root.glob(pattern)})


def render_doc(text_: str, where: str, tables: dict[str, Table], figures: dict[str, Figure],
               used: set[str] | None = None) -> str:
    """``text_`` with every marked table and figure rendered from its results file."""
    def sub(kind: str, registry: dict) -> Callable[[re.Match], str]:
        def replace(m: re.Match) -> str:
            name = m["name"]
            line = text_.count("\n", 0, m.start()) + 1
            if name not in registry:
                raise RenderError(f"{where}:{line}: unknown {kind} {name!r} (declare it in "
                                  f"benchmarks/doc_tables.py)")
            if used is not None:
                used.add(name)
            try:
                body = registry[name].render()
            except RenderError as e:
                raise RenderError(f"{where}:{line}: {kind} {name!r}: {e}") from None
            return (f"<!-- table: {name} -->\n{body}<!-- /table -->" if kind == "table"
                    else f"<!-- figure: {name} -->{body}<!-- /figure -->")
        return replace

    closed = len(TABLE.findall(text_)) + len(FIGURE.findall(text_))
    if closed != len(OPENERS.findall(text_)):
        raise RenderError(f"{where}: a table or figure marker is not closed (or its closing marker "
                          f"is not on a line of its own)")
    return FIGURE.sub(sub("figure", figures), TABLE.sub(sub("table", tables), text_))


def _registry():
    """benchmarks/doc_tables.py, which imports this module (as one module, also when run as a script)."""
    sys.modules.setdefault("render_tables", sys.modules[__name__])
    if str(Path(__file__).parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).parent))
    import doc_tables

    return doc_tables


def run(check: bool, root: Path = REPO, tables: dict | None = None, figures: dict | None = None,
        out=sys.stdout) -> int:
    """Render (or check) every doc under ``root``; 0 when all agree, 1 when a doc differed."""
    if tables is None or figures is None:
        doc_tables = _registry()
        tables = doc_tables.TABLES if tables is None else tables
        figures = doc_tables.FIGURES if figures is None else figures
    used: set[str] = set()
    differing = []
    for path in docs(root):
        where = str(path.relative_to(root))
        old = path.read_text()
        new = render_doc(old, where, tables, figures, used)
        if new != old:
            differing.append(where)
            if not check:
                atomic_write_text(path, new)
    unused = sorted((set(tables) | set(figures)) - used)
    if unused and check:
        print(f"declared but in no doc: {', '.join(unused)}", file=out)
    if check and differing:
        print(f"figures differ from benchmarks/results in: {', '.join(differing)} "
              f"(run python benchmarks/render_tables.py)", file=out)
    elif differing:
        print(f"rendered: {', '.join(differing)}", file=out)
    return 1 if check and (differing or unused) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a doc differs")
    args = parser.parse_args(argv)
    try:
        return run(args.check)
    except RenderError as e:
        print(f"render_tables: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
