"""Training speed of the TTS stages at the recipe's sizes, on random data in the cache's layout: how
long a given number of steps takes on this machine (or a GPU) before committing to a run.

    python benchmarks/tts_train_speed.py --device cpu --threads 2 --steps 20
    python benchmarks/tts_train_speed.py --device cuda --steps 100 --flow-batch 8 32

Each stage runs through ``python -m speechllm.tts.train`` itself (the same loop, model and batches),
on ``--utterances`` random utterances of 3-12 s; the figure is the loop's own seconds per step over
the steps before the final evaluation, first steps included. The LM stage needs its backbone
(``--backbone``, default the zoo's SmolLM2) and is left out where it is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import re
import tempfile
from pathlib import Path

from speechllm.zoo import DEFAULT_LLM

RECIPE = {  # the options of the README's recipe (tokenizer5, flow7, vocoder, lm 3:9)
    "tokenizer": ["--tokenizer-options", '{"levels": [3, 3, 3, 3, 3, 3, 3, 3], "recon_weight": 4.0}'],
    "vocoder": [],
    "flow": ["--flow-encoder", "2", "--flow-options", '{"conv_kernel": 5}'],
    "lm": ["--ratio", "3:9", "--speakers", "piper"],
}
TEXTS = ["The weather will be sunny tomorrow, with a light breeze from the west.",
         "He said that the book was on the table next to the window.",
         "Nineteen dollars and sixty five cents is what it cost them in the end."]


def run_stage(common: list[str], stage: str, out: Path, extra: list[str]) -> float:
    """Seconds per step, from the loop's last log line."""
    from speechllm.tts.train import main

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main(["--stage", stage, "--out", str(out), *common, *extra])
    if code != 0:
        raise RuntimeError(f"{stage} failed:\n{text.getvalue()[-2000:]}")
    found = re.findall(r"\(([0-9.]+) s/step this run\)", text.getvalue())
    if not found:
        raise RuntimeError(f"{stage}: no timing in its log:\n{text.getvalue()[-2000:]}")
    return float(found[-1])


def run_step(common: list[str], step: str, out: Path) -> None:
    from speechllm.tts.train import main

    with contextlib.redirect_stdout(io.StringIO()):
        if main(["--stage", step, "--out", str(out), *common]) != 0:
            raise RuntimeError(f"the {step} step failed")


def backbone_available(name: str) -> bool:
    from speechllm.zoo import ModelNotFoundError, resolve

    try:
        resolve(name, download=False)
        return True
    except ModelNotFoundError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--utterances", type=int, default=96)
    parser.add_argument("--flow-batch", type=int, nargs="+", default=[8], help="flow batch sizes to time")
    parser.add_argument("--backbone", default=DEFAULT_LLM)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch

    from speechllm.device import pick_device
    from speechllm.tts.data import write_random_cache

    device = pick_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    rng = random.Random(0)
    frames = [rng.randint(150, 600) for _ in range(args.utterances)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = write_random_cache(Path(tmp) / "cache", frames, TEXTS)
        n = args.steps
        common = ["--cache", str(cache), "--steps", str(n), "--log-every", str(n), "--eval-every", str(n),
                  "--save-every", str(n), "--device", str(device), "--threads", str(args.threads)]
        tok = Path(tmp) / "tokenizer"
        plan = [("tokenizer", 16, RECIPE["tokenizer"]), ("vocoder", 8, RECIPE["vocoder"])]
        plan += [("flow", b, RECIPE["flow"] + ["--tokenizer", str(tok)]) for b in args.flow_batch]
        if backbone_available(args.backbone):
            plan.append(("lm", 8, RECIPE["lm"] + ["--tokenizer", str(tok), "--backbone", args.backbone]))
        for k, (stage, batch, extra) in enumerate(plan):
            out = tok if stage == "tokenizer" else Path(tmp) / f"{stage}{k}"
            seconds = run_stage(common, stage, out, [*extra, "--batch-size", str(batch)])
            rows.append({"stage": stage, "batch": batch, "s_per_step": seconds, "device": where})
            print(f"{stage} batch {batch}: {seconds:.3f} s/step", flush=True)
            if stage == "tokenizer":  # the flow and the LM train on its tokens
                run_step(common, "tokens", tok)
    print(f"\n{where}, {n} steps each, random data of the recipe's shapes\n")
    print("| stage | batch | s/step | steps per hour |\n|---|---:|---:|---:|")
    for row in rows:
        per_hour = 3600 / row["s_per_step"]
        print(f"| {row['stage']} | {row['batch']} | {row['s_per_step']:.3f} | {per_hour:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
