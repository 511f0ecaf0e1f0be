"""Reference outputs from PyTorch/transformers for NeuroDiff's parity tests.

The reference is transformers itself (`AutoModelForCausalLM` with `output_hidden_states=True`,
the modeling files `models/{llama,mistral,qwen2,qwen3,olmo2,gemma2,gemma3,phi3,gpt2}/modeling_*.py`
of the pinned version), not
a re-implementation.

  python scripts/parity.py fixtures [--out crates/core/tests/fixtures]
      [--only NAME ...]
      Makes tiny random checkpoints of every supported architecture (random norm weights and
      biases, GQA, explicit head_dim, qkv bias, tied and untied embeddings, fp32/fp16/bf16,
      sharded and single-file, with and without GPT-2's `transformer.` prefix) and writes, next
      to each, reference.safetensors with transformers' input_ids, logits and hidden_states.

  python scripts/parity.py half-references [--out crates/core/tests/fixtures]
      Next to each committed fixture, reference-bf16.safetensors: transformers' logits and
      hidden_states with the checkpoint loaded in bfloat16 (`dtype=torch.bfloat16`, the eager
      path), so the bf16 parity bounds are against transformers in the same dtype.

  python scripts/parity.py check-inspect NEURODIFF_BIN [--seed N]
      Makes fresh checkpoints that are not among the committed fixtures (other seed, other
      shapes), runs `neurodiff inspect` on each and compares with transformers to 1e-4.

The committed fixtures are made by the first command; rerunning it with the pinned versions in
scripts/requirements.txt reproduces them.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors
import transformers

PROMPT = "The quick brown fox jumps over the lazy dog, and model diffing audits what fine-tuning changed."
CORPUS = [
    PROMPT,
    "NeuroDiff compares a base model with its fine-tuned checkpoint, layer by layer.",
    "Which layers moved? Is the change low-rank? Did a narrow fine-tune leave traces?",
    "Safety teams audit LoRA adapters and full fine-tunes before every release.",
    "the of and to in is that for it as was with be by on not he I this are or his",
] * 4
TOLERANCE = 1e-4


def make_tokenizer(vocab_size, bos):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def randomize(model, seed):
    """Random weights everywhere (norm weights around 1, biases around 0) so that parity
    cannot pass by accident on identity norms or zero biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith("ln_f.weight"):
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def specs(seed, vocab):
    """Each entry: (name, config class, config kwargs, storage dtype, bos, shard size)."""
    C = transformers
    big = seed != 0
    h = 96 if big else 64
    # The fresh checkpoints of check-inspect also exercise what the fixtures do not: llama3 RoPE
    # scaling, Qwen2 sliding layers, Mistral without a window, an untied GPT-2 with another act.
    llama_rope = dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                      rope_theta=500000.0) if big else dict(rope_theta=500000.0)
    qwen_window = dict(use_sliding_window=True, sliding_window=6, max_window_layers=1) if big else {}
    return [
        ("gpt2", C.GPT2Config, dict(n_embd=h, n_layer=3, n_head=4, n_positions=128,
                                     vocab_size=vocab, activation_function="gelu" if big else "gelu_new",
                                     tie_word_embeddings=not big,
                                     layer_norm_epsilon=1e-5), torch.float32, False, "200KB"),
        ("llama", C.LlamaConfig, dict(hidden_size=h, intermediate_size=2 * h + 16,
                                       num_hidden_layers=3, num_attention_heads=4,
                                       num_key_value_heads=2, vocab_size=vocab,
                                       rms_norm_eps=1e-5, **llama_rope,
                                       tie_word_embeddings=False, max_position_embeddings=256),
         torch.float16, True, None),
        ("mistral", C.MistralConfig, dict(hidden_size=h, intermediate_size=2 * h, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=1,
                                           head_dim=32, vocab_size=vocab, sliding_window=None if big else 8,
                                           rope_theta=10000.0, tie_word_embeddings=False,
                                           max_position_embeddings=256), torch.float32, True, None),
        ("qwen2", C.Qwen2Config, dict(hidden_size=h, intermediate_size=2 * h, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       vocab_size=vocab, rope_theta=1000000.0,
                                       tie_word_embeddings=True, max_position_embeddings=256,
                                       **qwen_window),
         torch.bfloat16, False, None),
        # OLMo 2: norms after attention and the MLP, q/k RMSNorm over the whole projection.
        ("olmo2", C.Olmo2Config, dict(hidden_size=h, intermediate_size=2 * h, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2 if big else 4,
                                       vocab_size=vocab, rope_theta=500000.0, rms_norm_eps=1e-6,
                                       tie_word_embeddings=False, max_position_embeddings=256),
         torch.float32, False, None),
        # Qwen3: per-head q/k RMSNorm, no qkv bias, an explicit head_dim wider than hidden/heads.
        ("qwen3", C.Qwen3Config, dict(hidden_size=h, intermediate_size=2 * h, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                       vocab_size=vocab, rope_theta=1000000.0, rms_norm_eps=1e-6,
                                       tie_word_embeddings=not big, max_position_embeddings=256,
                                       **qwen_window),
         torch.float32, False, None),
        # Gemma 2: sandwich norms with 1 + w, √d embeddings, GeGLU, soft-capped attention scores
        # and logits (caps small enough that tanh bends them), sliding layers 0 and 2.
        ("gemma2", C.Gemma2Config, dict(hidden_size=h, intermediate_size=2 * h, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                         query_pre_attn_scalar=20, vocab_size=vocab,
                                         sliding_window=4 if big else 6, attn_logit_softcapping=3.0,
                                         final_logit_softcapping=2.5 if big else 5.0,
                                         rope_theta=10000.0, rms_norm_eps=1e-6,
                                         tie_word_embeddings=True, max_position_embeddings=256),
         torch.float32, False, None),
        # Gemma 3: as Gemma 2 with per-head q/k norms (1 + w), no soft-capping, one RoPE for the
        # sliding layers and a scaled one for the global layers.
        ("gemma3_text", C.Gemma3TextConfig,
         dict(hidden_size=h, intermediate_size=2 * h, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=1 if big else 2, head_dim=32, query_pre_attn_scalar=24,
              vocab_size=vocab, sliding_window=5,
              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
              rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
              rms_norm_eps=1e-6, tie_word_embeddings=not big, max_position_embeddings=256),
         torch.float32 if big else torch.bfloat16, False, None),
        # Phi-3: fused qkv_proj and gate_up_proj, LongRoPE (the short factors here; the long ones
        # and a partial rotary factor in check-inspect, whose prompt outgrows the original length).
        ("phi3", C.Phi3Config, dict(hidden_size=h, intermediate_size=2 * h, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                     rope_parameters=phi3_rope(h // 4, 0.5 if big else 1.0, 16 if big else 64),
                                     original_max_position_embeddings=16 if big else 64,
                                     max_position_embeddings=256, sliding_window=None if big else 7,
                                     tie_word_embeddings=False, pad_token_id=0),
         torch.float32, False, None),
    ]


def phi3_rope(head_dim, partial, original):
    """LongRoPE parameters with distinct short and long factors per frequency."""
    n = int(head_dim * partial) // 2
    return {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": partial,
            "original_max_position_embeddings": original,
            "short_factor": [1.0 + 0.1 * i for i in range(n)],
            "long_factor": [2.0 + 0.5 * i for i in range(n)]}


def gemma2_legacy(c):
    """No layer_types (every other layer slides), a top-level rope_theta."""
    c.pop("layer_types")
    c["rope_theta"] = c.pop("rope_parameters")["rope_theta"]
    return c


def gemma3_legacy(c):
    """A sliding pattern instead of layer_types; global and local RoPE as top-level fields."""
    assert c.pop("layer_types") == ["sliding_attention", "full_attention", "sliding_attention"]
    rope = c.pop("rope_parameters")
    c["sliding_window_pattern"] = 2
    c["rope_theta"] = rope["full_attention"]["rope_theta"]
    c["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    c["rope_scaling"] = {k: v for k, v in rope["full_attention"].items() if k != "rope_theta"}
    return c


LEGACY = {"gemma2": gemma2_legacy, "gemma3_text": gemma3_legacy}


def build(name, cfg_cls, kwargs, dtype, bos, shard, out, seed):
    vocab = kwargs["vocab_size"]
    tok = make_tokenizer(vocab, bos)
    # Real models often pad the embedding past the tokenizer's vocabulary; so may these.
    assert tok.get_vocab_size() <= vocab, (tok.get_vocab_size(), vocab)
    config = cfg_cls(**kwargs, bos_token_id=0, eos_token_id=1)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config)
    randomize(model, seed)
    os.makedirs(out, exist_ok=True)
    save_kwargs = {"max_shard_size": shard} if shard else {}
    model.to(dtype).save_pretrained(out, **save_kwargs)
    os.remove(os.path.join(out, "generation_config.json"))  # not read by NeuroDiff
    if seed != 1 and name in LEGACY:
        # check-inspect also reads the config as the hub's transformers 4 files spell it.
        path = os.path.join(out, "config.json")
        with open(path) as f:
            legacy = LEGACY[name](json.load(f))
        with open(path, "w") as f:
            json.dump(legacy, f, indent=2)
    # The reference is what transformers computes in fp32 from the checkpoint as saved (fp16 and
    # bf16 weights upcast), loaded afresh so no buffer keeps a rounding from the cast above.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager").eval()
    tok.save(os.path.join(out, "tokenizer.json"))
    ids = torch.tensor([tok.encode(PROMPT).ids])
    with torch.no_grad():
        res = model(ids, output_hidden_states=True)
    n_layers = config.num_hidden_layers
    assert len(res.hidden_states) == n_layers + 1
    ref = {"input_ids": ids[0].contiguous(), "logits": res.logits[0].float().contiguous()}
    for i, hs in enumerate(res.hidden_states):
        ref[f"hidden_states.{i}"] = hs[0].float().contiguous()
    save_file(ref, os.path.join(out, "reference.safetensors"), metadata={"prompt": PROMPT})
    return out


def strip_gpt2_prefix(src, dst):
    """The hub's original GPT-2 checkpoints name tensors without `transformer.`."""
    os.makedirs(dst, exist_ok=True)
    index = json.load(open(os.path.join(src, "model.safetensors.index.json")))
    tensors = {}
    for f in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(os.path.join(src, f)))
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    for f in ("config.json", "tokenizer.json"):
        with open(os.path.join(src, f)) as a, open(os.path.join(dst, f), "w") as b:
            b.write(a.read())


def cmd_fixtures(args):
    torch.manual_seed(0)
    for name, cls, kw, dtype, bos, shard in specs(0, 384):
        if args.only and name not in args.only:
            continue
        out = build(name, cls, kw, dtype, bos, shard, os.path.join(args.out, name), seed=1)
        print("wrote", out)
    if not args.only or "gpt2" in args.only:
        strip_gpt2_prefix(os.path.join(args.out, "gpt2"), os.path.join(args.out, "gpt2-noprefix"))
        print("wrote", os.path.join(args.out, "gpt2-noprefix"))


HALF_FIXTURES = ["gpt2", "llama", "mistral", "qwen2", "olmo2", "qwen3", "gemma2", "gemma3_text", "phi3"]


def cmd_half_references(args):
    for name in HALF_FIXTURES:
        d = os.path.join(args.out, name)
        ids = load_file(os.path.join(d, "reference.safetensors"))["input_ids"]
        model = transformers.AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.bfloat16, attn_implementation="eager").eval()
        with torch.no_grad():
            res = model(ids[None], output_hidden_states=True)
        ref = {"logits": res.logits[0].float().contiguous()}
        for i, hs in enumerate(res.hidden_states):
            ref[f"hidden_states.{i}"] = hs[0].float().contiguous()
        save_file(ref, os.path.join(d, "reference-bf16.safetensors"), metadata={"prompt": PROMPT})
        print("wrote", os.path.join(d, "reference-bf16.safetensors"))


def cmd_check_inspect(args):
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls, kw, dtype, bos, shard in specs(args.seed, 448):
            d = build(name, cls, kw, dtype, bos, shard, os.path.join(tmp, name), seed=args.seed)
            out = os.path.join(tmp, name + ".out.safetensors")
            subprocess.run([args.bin, "inspect", d, "--prompt", PROMPT, "--out", out], check=True)
            got, ref = load_file(out), load_file(os.path.join(d, "reference.safetensors"))
            worst, errors = 0.0, {}
            for k, v in ref.items():
                if k == "input_ids":
                    assert torch.equal(got[k], v), f"{name}: input_ids differ"
                    continue
                errors[k] = (got[k] - v).abs().max().item()
                worst = max(worst, errors[k])
            ok = worst <= TOLERANCE
            failures += not ok
            print(f"{name:8s} seed={args.seed} max_abs_err={worst:.2e} {'ok' if ok else 'FAIL'}")
            if not ok:
                print("    " + ", ".join(f"{k}: {e:.1e}" for k, e in sorted(errors.items())))
    sys.exit(1 if failures else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--out", default="crates/core/tests/fixtures")
    f.add_argument("--only", nargs="*", help="write only these fixtures (names as in specs)")
    h = sub.add_parser("half-references")
    h.add_argument("--out", default="crates/core/tests/fixtures")
    c = sub.add_parser("check-inspect")
    c.add_argument("bin")
    c.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    {"fixtures": cmd_fixtures, "half-references": cmd_half_references,
     "check-inspect": cmd_check_inspect}[args.cmd](args)


if __name__ == "__main__":
    main()
