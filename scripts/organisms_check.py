"""Checks the trained organisms (`neurodiff organisms --trained --out DIR`) with transformers
and peft: every checkpoint loads with no missing or unexpected weight, the tokenizer loads
through AutoTokenizer and adds <s>, each adapter loads through PeftModel, the held-out losses
that ground_truth.json records (computed by the Rust training code) are what transformers
computes, a fine-tune of chosen blocks differs from the base only in those blocks, and every
fine-tune learned its domain (its domain loss well below the base's).

Usage: python scripts/organisms_check.py DIR
"""
import json
import sys
import warnings
from pathlib import Path

import torch
import transformers
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForCausalLM

transformers.utils.logging.disable_progress_bar()
# peft calls an accessor transformers 5 marks deprecated; nothing this check depends on.
warnings.filterwarnings("ignore", category=FutureWarning)

REL_TOL = 1e-4


def load(path):
    model, info = LlamaForCausalLM.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        sys.exit(f"{path}: transformers reports {bad}")
    return model.eval()


def windows(tokenizer, jsonl, seq_len, rows=64):
    """The evaluation windows the Rust side uses: every text with its <s>, concatenated, cut
    into windows of seq_len, the first `rows` of them."""
    ids = []
    for line in Path(jsonl).read_text().splitlines():
        ids.extend(tokenizer(json.loads(line)["text"])["input_ids"])
    n = min(len(ids) // seq_len, rows)
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.no_grad()
def loss(model, w):
    logits = model(input_ids=w[:, :-1]).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).double(), w[:, 1:].flatten()
    ).item()


def close(what, ours, theirs):
    if abs(ours - theirs) > REL_TOL * max(abs(ours), abs(theirs)):
        sys.exit(f"{what}: ground_truth.json says {ours}, transformers computes {theirs}")


def main(root):
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    seq_len = manifest["pretrain"]["seq_len"]
    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    ids = tokenizer("The comet")["input_ids"]
    if ids[0] != tokenizer.bos_token_id or tokenizer.decode(ids[1:]) != "The comet":
        sys.exit(f"tokenizer: 'The comet' -> {ids} (no <s> first, or no round trip)")
    base = load(root / "base")
    base_state = base.state_dict()
    worst = 0.0
    for name in manifest["organisms"]:
        d = root / name
        truth = json.loads((d / "ground_truth.json").read_text())
        w = windows(tokenizer, root / truth["heldout_data"], seq_len)
        base_loss = loss(base, w)
        close(f"{name}: base loss on the domain", truth["loss"]["domain_heldout"]["base"], base_loss)
        if truth["format"] == "adapter":
            model = PeftModel.from_pretrained(load(root / "base"), d).eval()
        else:
            model = load(d)
            state = model.state_dict()
            blocks = set(truth["trained_blocks"])
            for key, value in state.items():
                parts = key.split(".")
                in_trained = truth["kind"] == "full" or (
                    parts[:2] == ["model", "layers"] and int(parts[2]) in blocks
                )
                if not in_trained and not torch.equal(value, base_state[key]):
                    sys.exit(f"{name}: {key} changed outside the trained blocks {sorted(blocks)}")
        ft_loss = loss(model, w)
        close(f"{name}: fine-tuned loss on the domain", truth["loss"]["domain_heldout"]["finetuned"], ft_loss)
        worst = max(worst, abs(ft_loss - truth["loss"]["domain_heldout"]["finetuned"]) / ft_loss)
        if not ft_loss < 0.7 * base_loss:
            sys.exit(f"{name}: domain loss {ft_loss:.3f} is not well below the base's {base_loss:.3f}")
        print(f"{name}: loads; domain loss {base_loss:.3f} -> {ft_loss:.3f}")
    print(f"organisms ok: {len(manifest['organisms'])} load in transformers/peft; "
          f"worst relative loss difference {worst:.1e}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
