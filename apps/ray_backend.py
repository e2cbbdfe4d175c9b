"""Run ``speechllm transcribe`` on a Ray cluster (``--ray [ADDRESS]``; optional extra ``ray``).

Inputs are read by Ray Data's file reader (``read_binary_files``), so object-store URIs
(``s3://bucket/calls/``, ``gs://...``, ``abfs://...``, any filesystem pyarrow knows) work as well
as a folder every node shares; a URI folder is listed on the driver (recursively, audio
suffixes only), so each file keeps its own row. ``map_batches`` hands the bytes to a transcriber
held by each actor (a callable class, so the model loads once per actor), which decodes them
from a temporary file. Each actor asks for one CPU and ``--ray-gpus`` GPUs (fractional: several
actors share one GPU; default: the cluster's GPUs shared among the actors, none on a CPU
cluster), and runs on the GPU Ray gives it. Results stream back to the driver, which writes
the same JSON lines as a local run, in input order, so ``--resume``, ``--format`` and the exit
code behave the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath

from speechllm.audio import AUDIO_SUFFIXES, AudioError, is_uri
from speechllm.transcriber import Segment, Transcript
from speechllm.whisper.timing import Word


def expand_uri(item: str) -> list[str] | str:
    """The audio files under a URI (a folder: recursively, sorted), the URI itself for a file, or
    a one-line reason (no such object, no audio in the folder, no filesystem for the scheme)."""
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(item)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            return [item]
        if info.type == pafs.FileType.NotFound:
            return f"{item}: no such file or folder"
        listed = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        found = sorted(f.path for f in listed if f.type == pafs.FileType.File
                       and PurePosixPath(f.path).suffix.lower() in AUDIO_SUFFIXES)
    except Exception as exc:  # no credentials, unknown scheme, unreachable store: say so in one line
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"{item}: cannot list it ({reason})"
    scheme = item.split("://", 1)[0]
    return [f"{scheme}://{path}" for path in found] or f"{item}: no audio files under this URI"


def _ray_path(source: str) -> str:
    """How Ray Data names a file in its ``path`` column: a URI without its scheme, a local path absolute."""
    return source.split("://", 1)[1] if is_uri(source) else os.path.abspath(source)


class _Worker:
    def __init__(self, **options):
        import speechllm

        self.transcriber = speechllm.load(options.pop("model", None), **options)

    def __call__(self, batch: dict) -> dict:
        import tempfile
        from pathlib import Path

        out = []
        with tempfile.TemporaryDirectory(prefix="speechllm-ray-") as tmp:
            local = {}
            for i, (path, data) in enumerate(zip(batch["path"], batch["bytes"], strict=True)):
                copy = Path(tmp) / f"{i}{PurePosixPath(str(path)).suffix}"
                copy.write_bytes(bytes(data))
                local[str(copy)] = str(path)
            for _, result in self.transcriber.transcribe_many(list(local)):
                if isinstance(result, AudioError):
                    out.append(json.dumps({"error_path": local.get(result.path, result.path),
                                           "error": result.reason}))
                else:
                    out.append(json.dumps({"text": result.text, "duration": result.duration,
                                           "device": str(self.transcriber.device),
                                           "language": result.language,
                                           "language_probs": result.language_probs,
                                           "segments": [_segment_row(s) for s in result.segments]}))
        return {"path": list(batch["path"]), "result": out}


def _segment_row(segment: Segment) -> dict:
    row = segment.to_row()
    return {**row, "stop": segment.stop} if segment.stop is not None else row


def _segment(row: dict) -> Segment:
    words = row.pop("words", None)
    return Segment(**row, words=None if words is None else tuple(Word(**w) for w in words))


def _decode(source: str, payload: str) -> tuple[Transcript | AudioError, str | None]:
    """A worker's row as the local transcriber's result (an error names the input as given), and
    the device the actor ran on."""
    data = json.loads(payload)
    if "error" in data:
        return AudioError(source, data["error"]), None
    segments = tuple(_segment(s) for s in data["segments"])
    transcript = Transcript(data["text"], segments, data["duration"], data.get("language"),
                            data.get("language_probs"))
    return transcript, data.get("device")


def gpus_per_actor(requested: float | None, workers: int, cluster_gpus: float) -> float:
    """``--ray-gpus``: as asked (checked against the cluster), or by default the cluster's GPUs
    shared among the actors, at most one each (none on a CPU-only cluster)."""
    if requested is None:
        return min(1.0, cluster_gpus / workers) if cluster_gpus else 0.0
    if requested < 0:
        raise ValueError(f"--ray-gpus {requested:g}: must be 0 or more (fractions share a GPU)")
    if requested * workers > cluster_gpus + 1e-9:
        raise ValueError(f"--ray-gpus {requested:g} x --ray-workers {workers} needs "
                         f"{requested * workers:g} GPUs; the Ray cluster has {cluster_gpus:g}")
    return float(requested)


class RayTranscriber:
    """Same ``transcribe_many`` protocol as WhisperTranscriber, executed by Ray actors."""

    def __init__(self, address: str | None = None, workers: int = 1, files_per_task: int = 8,
                 num_cpus: int | None = None, gpus: float | None = None, **options):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--ray needs Ray: pip install 'speechllm[ray]'") from None
        if workers < 1:
            raise ValueError(f"--ray-workers {workers}: must be at least 1")
        local = address in (None, "", "local")
        ray.init(address=None if local else address, num_cpus=num_cpus if local else None,
                 ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        self.gpus = gpus_per_actor(gpus, workers, ray.cluster_resources().get("GPU", 0.0))
        self.workers, self.files_per_task, self.options = workers, files_per_task, options
        self.devices: set[str] = set()  # what the actors ran on (cuda:0, cpu)

    def transcribe_many(self, sources: Iterable[str],
                        on_segment: Callable[[str, Segment], None] | None = None
                        ) -> Iterator[tuple[str, Transcript | AudioError]]:
        """Results in the order of ``sources`` (local paths or URIs), each as soon as it and every
        input before it are done; ``on_segment`` is called for its segments then."""
        import ray

        sources = list(sources)
        if not sources:
            return
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # the batch job draws its own bar
        unique = list(dict.fromkeys(sources))
        by_path = {_ray_path(s): s for s in unique}
        dataset = ray.data.read_binary_files([s if is_uri(s) else os.path.abspath(s) for s in unique],
                                             include_paths=True)
        results = dataset.map_batches(_Worker, fn_constructor_kwargs=self.options,
                                      batch_size=self.files_per_task,
                                      compute=ray.data.ActorPoolStrategy(size=self.workers),
                                      num_cpus=1, num_gpus=self.gpus, batch_format="numpy")
        arrived: dict[str, Transcript | AudioError] = {}
        position = 0
        for row in results.iter_rows():
            source = by_path.get(str(row["path"]), str(row["path"]))
            arrived[source], device = _decode(source, row["result"])
            if device:
                self.devices.add(device)
            while position < len(sources) and sources[position] in arrived:
                source = sources[position]
                result = arrived[source]
                for segment in result.segments if on_segment and isinstance(result, Transcript) else ():
                    on_segment(source, segment)
                yield source, result
                position += 1
