"""Speaker grids for the corpus recipes: many distinct synthetic speakers drawn from the voice
engines of :mod:`speechllm.tts.speakers` (espeak-ng accents and variants, voices converted into new
speakers). The engines themselves, and every speaker id, belong to ``speechllm.tts``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from speechllm.tts.speakers import (  # noqa: F401  (re-exported: the recipes' speakers and engines)
    ENGINES,
    MissingToolError,
    Speaker,
    check_speakers,
    convert,
    estimate_seconds,
    parse_wav,
    reseed,
    synthesize,
)

# ---------------------------------------------------------------- speaker grids

ESPEAK_EN_ACCENTS = tuple("en-us en-gb en-gb-x-rp en-gb-x-gbclan en-029 en-us-nyc".split())
# dropped: en-gb-x-gbcwmd, en-gb-scotland and the "travis" variant (Whisper tiny.en WER over 50 %)
ESPEAK_VARIANTS = tuple(
    "m1 m2 m3 m4 m5 m6 m7 m8 f1 f2 f3 f4 f5 klatt klatt2 klatt3 klatt4 Andy Annie belinda benjamin david "
    "edward linda max michel paul robert steph victor aunty john rob".split()
)


def espeak_grid(
    accents: Iterable[str],
    count: int,
    seed: int,
    variants: Iterable[str] = ESPEAK_VARIANTS,
    speeds: tuple[int, int] = (140, 200),
    pitches: tuple[int, int] = (25, 75),
    gaps: tuple[int, int] = (0, 3),
) -> tuple[Speaker, ...]:
    """``count`` distinct espeak-ng speakers drawn from accents x variants x speed x pitch x gap."""
    rng = np.random.default_rng(seed)
    accents, variants = list(accents), list(variants)
    out: dict[str, Speaker] = {}
    while len(out) < count:
        sp = Speaker(
            "espeak",
            f"{accents[int(rng.integers(len(accents)))]}+{variants[int(rng.integers(len(variants)))]}",
            speed=int(rng.integers(speeds[0], speeds[1] + 1)) // 5 * 5,
            pitch=int(rng.integers(pitches[0], pitches[1] + 1)) // 5 * 5,
            gap=int(rng.integers(gaps[0], gaps[1] + 1)),
        )
        out.setdefault(sp.id, sp)
    return tuple(out.values())


def converted_grid(
    voices: Iterable[Speaker],
    count: int,
    seed: int,
    formants: tuple[float, float] = (0.88, 1.22),
    pitches: tuple[int, int] = (85, 240),
    durations: tuple[float, float] = (0.9, 1.1),
) -> tuple[Speaker, ...]:
    """``count`` distinct new speakers made from ``voices`` by :func:`convert`. Pitch follows the
    formant ratio loosely (a shorter vocal tract tends to go with a higher voice), within
    ``pitches``, so the grid spans low male to high female voices."""
    rng = np.random.default_rng(seed)
    voices = list(voices)
    lo, hi = formants
    out: dict[str, Speaker] = {}
    while len(out) < count:
        base = voices[int(rng.integers(len(voices)))]
        u = float(rng.uniform())
        # median pitch: log-interpolated by the formant draw, plus or minus ~35 %
        f0 = np.exp(np.log(pitches[0]) + (np.log(pitches[1]) - np.log(pitches[0])) * (u + rng.normal(0, 0.2)))
        sp = replace(
            base,
            formant=round(100 * (lo + (hi - lo) * u)),
            f0=int(np.clip(f0, *pitches)) // 5 * 5,
            duration=round(100 * rng.uniform(*durations)),
        )
        out.setdefault(sp.id, sp)
    return tuple(out.values())
