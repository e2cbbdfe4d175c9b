"""How close a trained flow stage comes to the recordings, before any vocoder or LM: normalised-mel
MSE of its prior μ and of its samples against the recorded mels of a cache's (or pack's) test split,
next to known smears of the same recordings to read it against (README: the recording blurred over
5 frames is still understood about as well as needed, over 9 frames it is not).

    python benchmarks/probes/tts_flow_mse.py --flow runs/tts/flow-gpu --cache runs/tts/pack --limit 20

The flow's samples start from its fixed noise with another test utterance as the voice prompt
(the first 3 s of the first test utterance not being scored), 6 Euler steps, full attention.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/tts.py
from tts import blurred, prior_mel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", required=True, help="a trained flow stage folder")
    parser.add_argument("--cache", required=True, help="cache or pack with the test split and its tokens")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--steps", type=int, default=6, help="Euler steps of the samples")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from speechllm.tts.data import load_corpus
    from speechllm.tts.flow import FlowConfig, FlowMatching
    from speechllm.tts.train import config_from_dict, read_stage

    config, state = read_stage(args.flow, "flow")
    flow = FlowMatching(config_from_dict(FlowConfig, config))
    flow.load_state_dict(state)
    flow.eval()
    test = load_corpus(args.cache, "test", tokens=True)
    index = [i for i, s in enumerate(test.speakers) if s.startswith("piper")][: args.limit + 1]
    prompt, index = index[0], index[1:]
    prompt_tokens = test.tokens[prompt][:75]
    prompt_mel = test.mel[prompt][: 2 * len(prompt_tokens)].float().T
    makers = {
        "recording blurred over 5 frames": lambda i: blurred(test.mel[i].float(), 5),
        "recording blurred over 9 frames": lambda i: blurred(test.mel[i].float(), 9),
        "flow prior μ": lambda i: prior_mel(flow, test.tokens[i]),
        f"flow samples ({args.steps} steps, voice prompt)": lambda i: flow.synthesize(
            test.tokens[i], prompt_mel, prompt_tokens, steps=args.steps).T,
    }
    info = json.loads((Path(args.flow) / "config.json").read_text())["info"]
    print(f"{args.flow} (step {info.get('step')}), {len(index)} test utterances of {args.cache}\n")
    print("| mel | normalised-mel MSE |\n|---|---:|")
    with torch.no_grad():
        for label, make in makers.items():
            errors = []
            for i in index:
                mel, ref = make(i), test.mel[i].float()
                n = min(len(mel), len(ref))
                errors.append(float((flow.normalize(mel[:n]) - flow.normalize(ref[:n])).pow(2).mean()))
            print(f"| {label} | {statistics.mean(errors):.4f} |", flush=True)


if __name__ == "__main__":
    main()
