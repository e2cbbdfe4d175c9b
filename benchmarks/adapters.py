"""The six adapters side by side: each trained with the same data, steps, batch and learning rate,
then all transcribing the same held-out files in one run.

    .venv/bin/python benchmarks/adapters.py --train corpora/mix30/train.jsonl --eval corpora/mix/dev.jsonl \
        --test corpora/asr-10h/test.jsonl --limit 60 --steps 2000 --batch-size 16 --out runs/adapters \
        --device cuda --json benchmarks/results/adapters.json

Every adapter is trained by ``speechllm finetune`` (one process each, ``--resume``: an interrupted
comparison picks up where it stopped, and finished adapters are not retrained) with the LLM's own
loss plus the CTC loss where the adapter has a CTC head, so the LLM decodes every transcript
(``asr_decoder="llm"``). Then ``benchmarks/asr.py`` transcribes ``--test`` with all of them on the
CPU (``--threads``), next to Whisper tiny.en's own decoder and faster-whisper, and the table gives
WER, real-time factor, trainable parameters, training wall time, the LLM loss at the end of training
and the WER of the run's own final evaluation. Run again with the same arguments, it only prints
the table.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADAPTERS = ("linear", "conv", "qformer", "window-qformer", "ctc", "alignformer")


def finetune_command(args: argparse.Namespace, adapter: str, out: Path) -> list[str]:
    command = [sys.executable, "-m", "speechllm.apps.cli", "finetune", "--train", args.train,
               "--eval", args.eval, "--adapter", adapter, "--out", str(out), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup", str(args.warmup),
               "--eval-every", str(args.steps), "--save-every", str(args.save_every),
               "--eval-max-rows", str(args.eval_max_rows), "--device", args.device, "--resume"]
    if args.lora_rank:
        command += ["--lora-rank", str(args.lora_rank)]
    if args.encoder_cache:
        command += ["--encoder-cache", args.encoder_cache]
    return command


def trained_steps(out: Path) -> int:
    config = out / "config.json"
    if not config.is_file():
        return 0
    return int(json.loads(config.read_text()).get("info", {}).get("step", 0))


def train(args: argparse.Namespace, adapter: str) -> dict:
    out = Path(args.out) / adapter
    timing = out / "benchmark_train.json"
    if trained_steps(out) >= args.steps and timing.is_file():
        return json.loads(timing.read_text())
    start = time.perf_counter()
    subprocess.run(finetune_command(args, adapter, out), check=True)
    record = {"adapter": adapter, "steps": args.steps, "train_wall_s": round(time.perf_counter() - start, 1),
              "device": args.device, "params": adapter_params(out)}
    timing.write_text(json.dumps(record, indent=2))
    return record


def adapter_params(out: Path) -> int:
    """Trained weights in the model folder: the adapter and, if any, the LoRA."""
    from safetensors import safe_open

    total = 0
    for file in [out / "adapter.safetensors", *sorted((out / "lora").glob("*.safetensors"))]:
        if file.is_file():
            with safe_open(str(file), "pt") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def training_summary(out: Path, tail: int = 5) -> dict:
    """From the run's train_log.jsonl: the LLM loss averaged over the last ``tail`` logged steps (a
    convergence figure that needs no decoding) and the final evaluation's WER on the eval rows."""
    log = out / "train_log.jsonl"
    if not log.is_file():
        return {}
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [r for r in records if "step" in r][-tail:]
    evals = [r["eval"] for r in records if "eval" in r]
    summary = {"lm_loss_end": sum(r["lm_loss"] for r in steps) / len(steps)} if steps else {}
    if evals and "wer" in evals[-1]:
        summary["eval_wer"] = evals[-1]["wer"]
    return summary


def transcribe_test(args: argparse.Namespace, folders: list[str]) -> Path:
    """benchmarks/asr.py over the test files with every trained adapter and Whisper, in one run;
    kept, with what it was run on, so printing the table again does not decode again."""
    results_file = Path(args.out) / "asr.json"
    key_file = Path(args.out) / "asr_key.json"
    key = {"test": args.test, "limit": args.limit, "threads": args.threads, "folders": folders,
           "steps": args.steps}
    if results_file.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key:
        return results_file
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "asr.py"), "--manifest", args.test,
                    "--limit", str(args.limit), "--threads", str(args.threads),
                    "--systems", "speechllm-whisper fp32", "faster-whisper int8", "--speechllm", *folders,
                    "--json", str(results_file)], check=True)
    key_file.write_text(json.dumps(key))
    return results_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--test", required=True, help="held-out speakers and texts (asr manifest)")
    parser.add_argument("--out", default="runs/adapters")
    parser.add_argument("--adapters", nargs="+", default=list(ADAPTERS), choices=ADAPTERS)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--eval-max-rows", type=int, default=60)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--encoder-cache", default=None)
    parser.add_argument("--device", default="cpu", help="training device (cuda for a GPU)")
    parser.add_argument("--limit", type=int, default=60, help="first N test files")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads when transcribing the test")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    trained = {a: train(args, a) for a in args.adapters}
    folders = [str(Path(args.out) / a) for a in args.adapters]
    results_file = transcribe_test(args, folders)
    rows = []
    for result in json.loads(results_file.read_text()):
        adapter = Path(result["system"].removeprefix("speech-LLM ")).name
        summary = training_summary(Path(args.out) / adapter) if adapter in trained else {}
        rows.append({**result, **trained.get(adapter, {}), **summary})
    print(f"\n{args.steps} steps x {args.batch_size}, lr {args.lr}, training on {args.device}; "
          f"test: first {args.limit} files of {args.test}")
    print("| system | test WER | RTF | trainable params | train wall | LLM loss at the end | eval WER |\n"
          "|---|---|---|---|---|---|---|")
    for row in rows:
        params = f"{row['params'] / 1e6:.2f}M" if "params" in row else "-"
        wall = f"{row['train_wall_s'] / 60:.1f} min" if "train_wall_s" in row else "-"
        loss = f"{row['lm_loss_end']:.3f}" if "lm_loss_end" in row else "-"
        eval_wer = f"{100 * row['eval_wer']:.2f}%" if "eval_wer" in row else "-"
        print(f"| {row.get('adapter', row['system'])} | {100 * row['wer']:.2f}% | {row['rtf']:.3f} | "
              f"{params} | {wall} | {loss} | {eval_wer} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
