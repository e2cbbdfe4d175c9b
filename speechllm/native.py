"""Small C kernels, built at first use with the machine's C compiler and loaded with ctypes.

A kernel is one C file beside the Python module that calls it (with the headers it includes from
there). :func:`build` compiles it once per machine, compiler and source (``cc -O3 -march=native``, with
OpenMP where the compiler has it: the ``libgomp`` torch already loaded) into
``~/.cache/speechllm/native/`` and returns the loaded library, or None where there is no compiler, the
build fails or ``SPEECHLLM_NATIVE=0``: every caller keeps a torch path for that case.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
from contextlib import nullcontext
from pathlib import Path

log = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC")
THREADED = ("-fopenmp",)  # tried first; without it the kernels run on one thread


def _cpu() -> bytes:
    """What ``-march=native`` code depends on: the CPU's model and flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor().encode()
    return "\n".join(sorted({x for x in lines if x.startswith(("model name", "flags", "Features"))})).encode()


def _build_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "speechllm" / "native"


def build(source: Path) -> ctypes.CDLL | None:
    """``source`` compiled for this machine and loaded (see the module doc); None where it cannot be."""
    if os.environ.get("SPEECHLLM_NATIVE", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.info("no C compiler: %s is not built, torch ops stand in", source.name)
        return None
    text = source.read_bytes()
    local = re.findall(rb'#include "([^"]+)"', text)  # headers beside it: a change rebuilds too
    headers = [source.with_name(name.decode()).read_bytes() for name in local]
    key = hashlib.sha256(b"\0".join([text, *headers, " ".join(FLAGS).encode(), compiler.encode(), _cpu()]))
    try:
        folder = _build_dir()
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="speechllm-native-"))
    path = folder / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if not path.exists():
        partial = folder / f".{path.name}.{os.getpid()}"
        command = [compiler, *FLAGS, "-o", str(partial), str(source)]
        result = subprocess.run([*command, *THREADED], capture_output=True, text=True)
        if result.returncode:
            result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            log.warning("%s did not build (%s): torch ops stand in", source.name,
                        (result.stderr.strip().splitlines() or [result.returncode])[-1])
            return None
        os.replace(partial, path)
    return ctypes.CDLL(str(path))


# C types by letter, for :func:`load`'s signatures: "p" a pointer, "i" an int64, "f" a float, "v" no result
_CTYPES = {"p": ctypes.c_void_p, "i": ctypes.c_int64, "f": ctypes.c_float, "v": None}


def load(source: Path, functions: dict[str, str]) -> ctypes.CDLL | None:
    """:func:`build` ``source`` and declare its ``functions``, each as ``"result:arguments"`` in the
    letters of ``_CTYPES`` (``"i:ppf"``: an int64 from two pointers and a float); None where it cannot be
    built."""
    lib = build(source)
    if lib is not None:
        for name, signature in functions.items():
            result, arguments = signature.split(":")
            function = getattr(lib, name)
            function.restype = _CTYPES[result]
            function.argtypes = [_CTYPES[letter] for letter in arguments]
    return lib


def traced(name: str):
    """A ``torch.profiler`` range named ``name`` while the profiler runs (a ctypes call is no torch op, so
    the profiler would not see its time), else nothing (no per-call cost)."""
    import torch.autograd.profiler as profiler

    return profiler.record_function(name) if profiler._is_profiler_enabled else nullcontext()
