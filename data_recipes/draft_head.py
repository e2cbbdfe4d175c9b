"""Train a model's draft head (:mod:`speechllm.generation.draft_head`) on its own replies: greedy replies
to typed prompts (generated passages with questions, quiz questions, chat requests), the LLM's final
hidden states along each reply, then an MLP that predicts the next hidden state from the last one and
the token chosen from it. On 2 CPU threads: replies ~13 min for 2,500 prompts, training ~1 min an epoch.

    python -m speechllm.data_recipes.draft_head --model speechllm-starter --count 2500 \\
        --out MODEL_FOLDER/draft_head.safetensors

The prompts are drawn with their own seed (``--seed``), not from any corpus's test rows; the file goes
into the model folder, named by its config.json (``"draft_head": "draft_head.safetensors"``).
docs/decoding.md has what the starter's head measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from speechllm.data_recipes.phrase_book import load_model, replies_parser
from speechllm.data_recipes.phrase_book import prompts as typed_prompts
from speechllm.generation import DraftHead, GenerationOptions, StaticState, engine_for
from speechllm.generation.draft_head import output_rows

TOPICS = (
    "the ocean", "volcanoes", "bees", "the moon", "chess", "bread", "trains", "jazz", "rainforests",
    "the Great Wall of China", "electric cars", "coffee", "photosynthesis", "the internet", "dinosaurs",
    "recycling", "the Olympic Games", "gardening", "earthquakes", "the human heart", "penguins",
    "solar panels", "ancient Egypt", "football", "mushrooms", "clouds", "libraries", "bicycles", "the piano",
    "glaciers", "honey", "robots", "deserts", "the printing press", "tea", "owls", "castles", "rivers",
    "bridges", "yoga", "camping", "museums", "the brain", "cheese", "rockets", "whales", "forests",
    "painting", "money", "time zones",
)
REQUESTS = (
    "Tell me about {t}.", "Explain {t} to a child.", "Write a short story about {t}.",
    "What are three interesting facts about {t}?", "Why do people care about {t}?",
    "Write a haiku about {t}.", "Give me some advice about {t}.", "What is the history of {t}?",
    "Describe {t} in a few sentences.", "What would a world without {t} be like?",
)


def prompts(count: int, seed: int = 777) -> Iterator[str]:
    """``count`` typed prompts: four in five the phrase book's (passages with questions, quiz questions),
    one in five a chat request about a topic."""
    rng = np.random.default_rng(seed)
    chat = count // 5
    yield from typed_prompts(count - chat, seed)
    for _ in range(chat):
        yield REQUESTS[int(rng.integers(len(REQUESTS)))].format(t=TOPICS[int(rng.integers(len(TOPICS)))])


@dataclass
class Replies:
    """Reply positions, flattened: the LLM's final hidden state at each (fp16, [N, D]), the token it
    chose there ([N]) and which reply the position belongs to ([N])."""

    features: torch.Tensor
    tokens: torch.Tensor
    reply: torch.Tensor


@torch.no_grad()
def collect(model, texts: list[str], max_new_tokens: int = 96, progress: bool = True) -> Replies:
    """The model's greedy replies to ``texts`` (typed, as ``generate(None, text)`` answers them, stop
    token included) and its final hidden states along them (one pass over prompt + reply each)."""
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    engine = engine_for(model.llm)
    embed = model.llm.get_input_embeddings()
    features, tokens, owner = [], [], []
    with model.text_mode():
        for i, text in enumerate(tqdm(texts, desc="replies", unit="prompt", disable=not progress)):
            generation = model.generate(None, text, options)[0]
            reply = [*generation.tokens, *(model._stop_ids[:1] if generation.stop == "end" else ())]
            prompt = model._prefill_seeded(None, [text])[1][0]
            ids = torch.tensor(prompt + reply[:-1])  # the hidden state before each reply token
            n = len(prompt)
            embeds = embed(ids[None])
            state = StaticState(model.llm, embeds[:, :n - 1], torch.ones(1, n - 1, dtype=torch.long),
                                torch.arange(n - 1)[None], capacity=len(ids) + 1)
            hidden = engine.forward(state, embeds[:, n - 1:], torch.arange(n - 1, len(ids))[None],
                                    all_logits=True, head=False)[0]
            features.append(hidden.half())
            tokens += reply
            owner += [i] * len(reply)
    return Replies(torch.cat(features), torch.tensor(tokens), torch.tensor(owner))


def train(head: DraftHead, replies: Replies, embeddings: torch.Tensor, rows: torch.Tensor,
          vocab: torch.Tensor, epochs: int = 6, unroll: int = 3, batch: int = 256, lr: float = 1e-3,
          feature_weight: float = 10.0, seed: int = 0, progress: bool = True) -> list[float]:
    """Train ``head`` on ``replies``: from the hidden state before reply token j and token j, predict the
    hidden state before token j + 1 (smooth L1, weighted ``feature_weight``) and token j + 1 through the
    output ``rows`` of ``vocab`` (cross-entropy), chained ``unroll`` steps on its own predictions as it
    drafts. ``embeddings`` [V, D]: the LLM's input embeddings. Returns the mean loss of each epoch."""
    torch.manual_seed(seed)
    features = replies.features.float()
    tokens, owner = replies.tokens, replies.reply
    n = len(tokens)
    index = torch.full((int(tokens.max()) + 1,), -100, dtype=torch.long)
    index[vocab] = torch.arange(len(vocab))
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    batches = max(n // batch, 1)
    total, losses = epochs * batches, []
    head.train()
    bar = tqdm(total=total, desc="draft head", unit="batch", disable=not progress)
    for epoch in range(epochs):
        order, epoch_loss = torch.randperm(n), 0.0
        for b in range(batches):
            at = order[b * batch:(b + 1) * batch]
            f, live, loss = features[at], torch.ones(len(at), dtype=torch.bool), 0.0
            for k in range(unroll):
                now, nxt = (at + k).clamp(max=n - 1), (at + k + 1).clamp(max=n - 1)
                live = live & (at + k + 1 < n) & (owner[nxt] == owner[at])
                f = head(f, embeddings[tokens[now]])
                ce = F.cross_entropy(f @ rows.T, index[tokens[nxt]], reduction="none", ignore_index=-100)
                fit = F.smooth_l1_loss(f, features[nxt], reduction="none").mean(-1)
                weight = live.float()
                step_loss = ((ce + feature_weight * fit) * weight).sum() / weight.sum().clamp(min=1)
                loss = loss + step_loss / unroll
            for group in optimizer.param_groups:  # cosine decay
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch * batches + b) / total))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += float(loss.detach()) / batches
            bar.update()
        losses.append(epoch_loss)
        bar.set_postfix(loss=f"{epoch_loss:.3f}")
    bar.close()
    return losses


def build(model, texts: list[str], epochs: int = 6, hidden: int = 1536, blocks: int = 1, batch: int = 256,
          lr: float = 1e-3, progress: bool = True) -> tuple[DraftHead, torch.Tensor, list[float]]:
    """A draft head trained on the model's replies to ``texts``; its vocabulary (every token the replies
    use) and the training losses."""
    replies = collect(model, texts, progress=progress)
    vocab = replies.tokens.unique()
    with torch.no_grad():
        embed = model.llm.get_input_embeddings()
        embeddings = embed(torch.arange(embed.num_embeddings)[None])[0].float()
        rows = output_rows(model.llm, vocab)
    head = DraftHead(embeddings.shape[1], hidden, blocks)
    losses = train(head, replies, embeddings, rows, vocab, epochs, batch=batch, lr=lr, progress=progress)
    return head.eval(), vocab, losses


def main() -> None:
    parser = replies_parser(__doc__, "DRAFT_HEAD.safetensors", 2500, 777)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=1536, help="the MLP's inner width")
    parser.add_argument("--blocks", type=int, default=1)
    args = parser.parse_args()
    model = load_model(args)
    t0 = time.perf_counter()
    texts = list(prompts(args.count, args.seed))
    head, vocab, losses = build(model, texts, args.epochs, args.hidden, args.blocks)
    head.save(args.out, vocab, {"model": args.model, "prompts": str(args.count), "seed": str(args.seed),
                                "epochs": str(args.epochs), "loss": f"{losses[-1]:.4f}"})
    print(f"{len(vocab)} tokens, losses {[round(x, 3) for x in losses]}, "
          f"{time.perf_counter() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
