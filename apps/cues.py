"""Subtitle cues split for reading: at most ``max_lines`` lines of ``max_line_chars`` characters
and ``max_cue_seconds`` on screen (defaults 2 x 42 characters, 7 s, as broadcasters' guidelines
ask).

Cues are cut at word boundaries, timed by the words' own times where the transcript has word
timestamps, and otherwise by spreading each segment's time over its words in proportion to
their length. A sentence end closes a cue rather than starting its second line; a cue's two
lines are balanced. No cue spans two segments, and none outlasts ``max_cue_seconds`` (a single
word that does is cut short).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from speechllm.transcriber import Segment
from speechllm.whisper.timing import Word

SENTENCE_END = (".", "?", "!", "。", "？", "！")


@dataclass(frozen=True)
class CueOptions:
    max_line_chars: int = 42
    max_lines: int = 2
    max_cue_seconds: float = 7.0
    highlight_words: bool = False  # srt/vtt: one cue per word, the word underlined (needs word times)

    def __post_init__(self) -> None:
        if self.max_line_chars < 1 or self.max_lines < 1 or self.max_cue_seconds <= 0:
            raise ValueError("--max-line-chars and --max-lines must be at least 1, --max-cue-seconds above 0")


DEFAULT = CueOptions()


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[str, ...]
    words: tuple[Word, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def timed_words(segment: Segment) -> list[Word]:
    """The segment's words with times: its word timestamps, or its span shared out by length."""
    if segment.words:  # a piece without a leading space belongs to the word before ("o" "'clock")
        out: list[Word] = []
        for w in segment.words:
            if out and w.word.strip() and not w.word.startswith(" "):
                last = out[-1]
                out[-1] = Word(last.word + w.word, last.start, w.end, min(last.probability, w.probability))
            elif w.word.strip():
                out.append(w)
        return out
    words = segment.text.split()
    total = sum(len(w) + 1 for w in words)
    out, t = [], segment.start
    span = max(segment.end - segment.start, 0.0)
    for w in words:
        end = t + span * (len(w) + 1) / total
        out.append(Word(" " + w, round(t, 3), round(end, 3), 1.0))
        t = end
    return out


def _pieces(word: Word, limit: int) -> list[Word]:
    """A word longer than a line, cut into line-long pieces sharing its time."""
    text = word.word.strip()
    if len(text) <= limit:
        return [Word(text, word.start, word.end, word.probability)]
    parts = [text[i : i + limit] for i in range(0, len(text), limit)]
    step = (word.end - word.start) / len(parts)
    return [Word(p, round(word.start + i * step, 3), round(word.start + (i + 1) * step, 3), word.probability)
            for i, p in enumerate(parts)]


def balance(words: list[str], n_lines: int, limit: int) -> list[str]:
    """Words on ``n_lines`` lines of at most ``limit`` characters, the longest line as short as can be
    (two lines: the best single break; more: greedy fill)."""
    if n_lines == 2 and len(words) > 1:
        best = None
        for cut in range(1, len(words)):
            lines = [" ".join(words[:cut]), " ".join(words[cut:])]
            longest = max(len(line) for line in lines)
            if longest <= limit and (best is None or longest < best[0]):
                best = (longest, lines)
        if best is not None:
            return best[1]
    lines: list[str] = []
    for w in words:
        if lines and len(lines[-1]) + 1 + len(w) <= limit:
            lines[-1] += " " + w
        else:
            lines.append(w)
    return lines


def _cue(words: list[Word], n_lines: int, options: CueOptions) -> Cue:
    start = words[0].start
    end = min(max(words[-1].end, start), start + options.max_cue_seconds)
    lines = balance([w.word for w in words], n_lines, options.max_line_chars)
    return Cue(round(start, 3), round(end, 3), tuple(lines), tuple(words))


def segment_cues(words: list[Word], options: CueOptions = DEFAULT) -> list[Cue]:
    """One segment's (line-sized) words packed greedily into cues."""
    cues: list[Cue] = []
    current: list[Word] = []
    lines: list[str] = []
    limit = options.max_line_chars
    for word in words:
        fits_line = bool(lines) and len(lines[-1]) + 1 + len(word.word) <= limit
        new_line_ok = len(lines) < options.max_lines and not (
            current and current[-1].word.endswith(SENTENCE_END))
        too_long = bool(current) and word.end - current[0].start > options.max_cue_seconds
        if current and (too_long or not (fits_line or new_line_ok)):
            cues.append(_cue(current, len(lines), options))
            current, lines, fits_line = [], [], False
        if fits_line:
            lines[-1] += " " + word.word
        else:
            lines.append(word.word)
        current.append(word)
    if current:
        cues.append(_cue(current, len(lines), options))
    return cues


def split_cues(segments: Iterable[Segment], options: CueOptions = DEFAULT) -> list[Cue]:
    """Reading-sized cues of ``segments`` in order (see the module's docstring)."""
    cues: list[Cue] = []
    for segment in segments:
        words = [piece for w in timed_words(segment) for piece in _pieces(w, options.max_line_chars)]
        cues += segment_cues(words, options)
    for i in range(len(cues) - 1):  # no overlap with the next cue
        if cues[i].end > cues[i + 1].start:
            c = cues[i]
            cues[i] = Cue(c.start, max(c.start, cues[i + 1].start), c.lines, c.words)
    return cues


def highlighted(cue: Cue) -> list[Cue]:
    """One cue per word of ``cue``, that word underlined (``<u>``), as openai-whisper's
    ``--highlight_words``; the gaps between words show the cue plain."""
    out = []
    t = cue.start
    for i, w in enumerate(cue.words):
        if w.start > t:
            out.append(Cue(t, w.start, cue.lines, cue.words))
        marked = [x.word if j != i else f"<u>{x.word}</u>" for j, x in enumerate(cue.words)]
        lines, k = [], 0
        for line in cue.lines:
            n = len(line.split())
            lines.append(" ".join(marked[k : k + n]))
            k += n
        out.append(Cue(w.start, max(w.end, w.start), tuple(lines), cue.words))
        t = max(w.end, t)
    if t < cue.end:
        out.append(Cue(t, cue.end, cue.lines, cue.words))
    return out
