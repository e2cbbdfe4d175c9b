"""What a client of the chat server may reach, and what it is told.

* :class:`AllowList`: the models (or voices) a client may pick, fixed when the server starts: public
  names for what the operator offered. A host folder goes by its own name, never by its path; a
  name not on the list gets one message whatever it is, so a client learns nothing about the host
  (whether a path exists, what a folder holds) and cannot make the server download anything.
* :func:`scrub_paths`: error text for the client, with host paths replaced.
* :class:`PrivateTempDir`: the server's one temporary folder (mode 0700), removed when the server
  stops, or at exit.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


class NotOffered(ValueError):
    """A model or voice that is not on the server's allow-list."""


@dataclass(frozen=True)
class AllowList:
    what: str  # "model" | "voice", for the messages
    sources: Mapping[str, str]  # public name -> what it loads (a zoo or registry name, a folder, a file)

    @classmethod
    def build(cls, what: str, sources: Iterable[str], names: Iterable[str] = ()) -> AllowList:
        """``names`` (zoo or registry names) stand for themselves; each of ``sources`` (what the operator
        passed) does too, unless it is a host path: then it goes by its last part (``-2``... on a clash)."""
        offered = {name: name for name in names}
        for source in sources:
            if source in offered.values():
                continue
            public = source
            if source not in offered and Path(source).expanduser().exists():
                public = Path(source).expanduser().resolve().name or "folder"
            base, n = public, 1
            while public in offered:
                n += 1
                public = f"{base}-{n}"
            offered[public] = source
        return cls(what, offered)

    def names(self) -> list[str]:
        return sorted(self.sources)

    def source(self, name: str) -> str:
        """What ``name`` loads; one message for every name not offered, naming only the offered ones."""
        if name not in self.sources:
            raise NotOffered(f"that {self.what} is not offered by this server (choose one of: "
                             f"{', '.join(self.names())})")
        return self.sources[name]

    def public(self, source: str) -> str:
        return next((name for name, loads in self.sources.items() if loads == source), source)

    def path_names(self) -> dict[str, str]:
        """Host path (as given, expanded and resolved) -> public name, for :func:`scrub_paths`."""
        found = {}
        for name, source in self.sources.items():
            path = Path(source).expanduser()
            if name != source and path.exists():
                for form in {source, str(path), str(path.resolve())}:
                    found[form] = name
        return found


# An absolute path: at the start, or after a space, quote, bracket or '='; up to a space, quote,
# bracket, comma, semicolon or colon (so "FILE: reason" keeps its reason).
_HOST_PATH = re.compile(r"""(?<![^\s'"(\[=])(?:~|[A-Za-z]:)?[/\\][^\s'"()\[\]<>,;:]+""")


def scrub_paths(text: str, known: Mapping[str, str] = {}) -> str:
    """``text`` with each ``known`` host path replaced by its public name, and any other absolute
    path by ``<path>``."""
    for path in sorted(known, key=len, reverse=True):
        text = text.replace(path, known[path])
    return _HOST_PATH.sub("<path>", text)


class PrivateTempDir:
    """A fresh folder only this user can read (0700) under ``parent`` (default: the system's temporary
    folder); :meth:`remove` deletes it with everything in it, and runs at exit if nobody called it."""

    def __init__(self, parent: str | os.PathLike | None = None, prefix: str = "speechllm-chat-"):
        self.path = tempfile.mkdtemp(prefix=prefix, dir=parent)
        os.chmod(self.path, 0o700)  # mkdtemp does this already; say it
        atexit.register(self.remove)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        atexit.unregister(self.remove)
