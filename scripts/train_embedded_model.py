"""Train the embedded default model: a tiny Pythia-architecture LM on the stdlib corpus.

Reproduce the committed weights exactly with:

    python scripts/train_embedded_model.py --out earlyexit/assets/tiny-stdlib

and its 2-layer draft sibling (same text, same tokenizer; the draft model of
`bench.baselines=[assisted]` on the embedded model) with:

    python scripts/train_embedded_model.py --out earlyexit/assets/tiny-stdlib-draft \
        --layers 2 --tokenizer earlyexit/assets/tiny-stdlib

It trains a byte-level BPE tokenizer and a GPTNeoXForCausalLM from scratch on CPU,
then writes config, tokenizer and fp16 safetensors weights plus a JSON report
(held-out perplexity vs a unigram baseline). The shape keeps a full-vocabulary head
cheaper than one layer (V*d < 12*d^2), so early exit can pay on this model.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from earlyexit.data.corpus import split_documents

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def encode_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def heldout_nll(model: GPTNeoXForCausalLM, stream: torch.Tensor, seq_len: int) -> float:
    """Mean next-token NLL over non-overlapping windows of the held-out stream."""
    model.eval()
    n = (len(stream) - 1) // seq_len
    total, count = 0.0, 0
    for i in range(0, n, 8):
        rows = [stream[j * seq_len : j * seq_len + seq_len + 1] for j in range(i, min(i + 8, n))]
        batch = torch.stack(rows)
        logits = model(batch[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"
        )
        total += loss.item()
        count += batch[:, 1:].numel()
    model.train()
    return total / count


def unigram_nll(train: torch.Tensor, heldout: torch.Tensor, vocab: int) -> float:
    """Held-out NLL of an add-one unigram model fitted on the training stream."""
    counts = torch.bincount(train, minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log()
    return -logp[heldout[1:]].mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("earlyexit/assets/tiny-stdlib"))
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tokenizer", type=Path, default=None,
        help="reuse this model directory's tokenizer instead of training one (a draft sibling must "
        "share its target's tokenizer exactly)",
    )  # fmt: skip
    args = p.parse_args()

    torch.manual_seed(args.seed)
    train_texts, heldout_texts = split_documents()
    if args.tokenizer is not None:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    else:
        tokenizer = train_tokenizer(train_texts, args.vocab)
    train_ids = encode_stream(tokenizer, train_texts)
    heldout_ids = encode_stream(tokenizer, heldout_texts)
    print(f"train tokens {len(train_ids):,}  held-out tokens {len(heldout_ids):,}")

    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=1024,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = GPTNeoXForCausalLM(config)
    decay = [p_ for n, p_ in model.named_parameters() if p_.dim() >= 2]
    no_decay = [p_ for n, p_ in model.named_parameters() if p_.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    start = time.time()
    bar = tqdm(range(args.steps), desc="train embedded LM")
    for _step in bar:
        starts = torch.randint(0, len(train_ids) - args.seq_len - 1, (args.batch,), generator=gen)
        batch = torch.stack([train_ids[s : s + args.seq_len + 1] for s in starts])
        out = model(batch[:, :-1], labels=batch[:, :-1].clone())
        # transformers shifts labels itself; pass the inputs as labels.
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{out.loss.item():.3f}")

    nll = heldout_nll(model, heldout_ids, args.seq_len)
    uni = unigram_nll(train_ids, heldout_ids, len(tokenizer))
    report = {
        "heldout_ppl": math.exp(nll),
        "unigram_ppl": math.exp(uni),
        "train_tokens": len(train_ids),
        "heldout_tokens": len(heldout_ids),
        "tokens_seen": args.steps * args.batch * args.seq_len,
        "train_seconds": round(time.time() - start),
        "args": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(args.out, safe_serialization=True)
    if args.tokenizer is not None:  # the very files: a draft's tokenizer must be its target's
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(args.tokenizer / name, args.out / name)
    else:
        tokenizer.save_pretrained(args.out)
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
