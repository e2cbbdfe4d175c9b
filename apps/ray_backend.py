"""Run ``speechllm transcribe`` on a Ray cluster (``--ray [ADDRESS]``; optional extra ``ray``).

Ray Data's ``map_batches`` calls a transcriber held by each actor (a callable class, so the
model loads once per worker); results stream back to the driver, which writes the same JSON
lines as a local run, so ``--resume``, ``--format`` and the exit code behave the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from speechllm.audio import AudioError
from speechllm.transcriber import Segment, Transcript


class _Worker:
    def __init__(self, **options):
        import speechllm

        self.transcriber = speechllm.load(options.pop("model", None), **options)

    def __call__(self, batch: dict) -> dict:
        out = []
        for _, result in self.transcriber.transcribe_many([str(a) for a in batch["audio"]]):
            if isinstance(result, AudioError):
                out.append(json.dumps({"error_path": result.path, "error": result.reason}))
            else:
                out.append(json.dumps({"text": result.text, "duration": result.duration,
                                       "segments": [[s.start, s.end, s.text] for s in result.segments]}))
        return {"audio": list(batch["audio"]), "result": out}


def _decode(source: str, payload: str) -> Transcript | AudioError:
    data = json.loads(payload)
    if "error" in data:
        return AudioError(data["error_path"], data["error"])
    return Transcript(data["text"], tuple(Segment(*s) for s in data["segments"]), data["duration"])


class RayTranscriber:
    """Same ``transcribe_many`` protocol as WhisperTranscriber, executed by Ray actors."""

    def __init__(self, address: str | None = None, workers: int = 1, files_per_task: int = 8,
                 num_cpus: int | None = None, **options):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--ray needs Ray: pip install 'speechllm[ray]'") from None
        local = address in (None, "", "local")
        ray.init(address=None if local else address, num_cpus=num_cpus if local else None,
                 ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        self.workers, self.files_per_task, self.options = workers, files_per_task, options

    def transcribe_many(self, sources: Iterable[str]) -> Iterator[tuple[str, Transcript | AudioError]]:
        import ray

        sources = list(sources)
        if not sources:
            return
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        dataset = ray.data.from_items([{"audio": s} for s in sources])
        results = dataset.map_batches(_Worker, fn_constructor_kwargs=self.options,
                                      batch_size=self.files_per_task, concurrency=self.workers,
                                      num_cpus=1, batch_format="numpy")
        for row in results.iter_rows():
            yield str(row["audio"]), _decode(str(row["audio"]), row["result"])
