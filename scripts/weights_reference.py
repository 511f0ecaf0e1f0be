"""Float64 reference metrics for NeuroDiff's weight audit, computed with torch.linalg.

  python scripts/weights_reference.py [--out crates/core/tests/fixtures/weights]

Writes a tiny Llama base and a fine-tuned copy with known kinds of change (dense noise, a rank-2
update, an untouched tensor, changed norms, a grown vocabulary), PEFT LoRA adapters made by the
`peft` library (plain, rsLoRA with an alpha_pattern, and a GPT-2 Conv1D adapter with
fan_in_fan_out on the gpt2 parity fixture), and reference.json with every metric from a full
float64 SVD of the dense delta (for adapters, PEFT's own get_delta_weight).

The definitions are the literature's, not NeuroDiff's docs: the matrix norms of
torch.linalg (`matrix_norm` 'fro' and 'nuc', `svdvals`), the stable rank ||W||_F^2 / ||W||_2^2
(Rudelson and Vershynin, 2007), the effective rank exp(H(sigma / ||sigma||_1)) (Roy and Vetterli,
2007), and, for adapters, huggingface/peft `src/peft/tuners/lora/layer.py`
(`Linear.get_delta_weight`: scaling * B @ A, transposed for fan_in_fan_out; `scaling` from
`lora_alpha / r`, or `/ sqrt(r)` with `use_rslora`, per `alpha_pattern`), called through PEFT itself.
"""

import argparse
import json
import math
import os

import torch
import transformers
from peft import LoraConfig, get_peft_model

TOP_K = 8


def metrics(base, ft):
    """Every metric of one tensor pair from a float64 full SVD of the delta."""
    base, ft = base.double(), ft.double()
    d = ft - base
    fro = d.norm().item()
    base_fro = base.norm().item()
    out = {
        "fro": fro,
        "base_fro": base_fro,
        "rel_fro": fro / base_fro,
        "cosine": (base.flatten() @ ft.flatten()).item() / (base.norm().item() * ft.norm().item()),
        "max_abs": d.abs().max().item(),
    }
    if d.dim() == 2 and fro > 0:
        s = torch.linalg.svdvals(d)
        p = s / s.sum()
        p = p[p > 0]
        out.update(
            spectral=s[0].item(),
            nuclear=s.sum().item(),
            stable_rank=fro**2 / s[0].item() ** 2,
            effective_rank=math.exp(-(p * p.log()).sum().item()),
            top_singular_values=s[:TOP_K].tolist(),
        )
    return out


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def make_pair(out):
    cfg = transformers.LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                   tie_word_embeddings=False)
    base = transformers.AutoModelForCausalLM.from_config(cfg)
    randomize(base, 1)
    base.save_pretrained(os.path.join(out, "base"))
    g = torch.Generator().manual_seed(2)
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    # Dense noise everywhere in layer 0's attention, a rank-2 update in layer 1's MLP, changed
    # norms, layer 1's q_proj untouched, four added tokens.
    for k in sd:
        if k.startswith("model.layers.0.self_attn"):
            sd[k] += 0.01 * torch.randn(sd[k].shape, generator=g)
        if "layernorm" in k:
            sd[k] += 0.02 * torch.randn(sd[k].shape, generator=g)
    k = "model.layers.1.mlp.down_proj.weight"
    m, n = sd[k].shape
    sd[k] += 0.3 * torch.randn(m, 2, generator=g) @ torch.randn(2, n, generator=g) / n**0.5
    k = "model.layers.1.self_attn.v_proj.weight"
    sd[k] += 0.005 * torch.randn(sd[k].shape, generator=g)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        sd[k] = torch.cat([sd[k] + 0.001 * torch.randn(sd[k].shape, generator=g),
                           0.05 * torch.randn(4, sd[k].shape[1], generator=g)])
    ft_cfg = transformers.LlamaConfig(**{**cfg.to_dict(), "vocab_size": 132})
    ft = transformers.AutoModelForCausalLM.from_config(ft_cfg)
    ft.load_state_dict(sd)
    ft.save_pretrained(os.path.join(out, "ft"))

    base_sd = base.state_dict()
    ref = {}
    for k, v in sd.items():
        shared = v[: base_sd[k].shape[0]] if v.shape != base_sd[k].shape else v
        ref[k] = metrics(base_sd[k], shared)
    ref["model.embed_tokens.weight"]["added_fro"] = sd["model.embed_tokens.weight"][128:].double().norm().item()
    return base, ref


def make_adapter(base, out, name, seed, **lora):
    peft_model = get_peft_model(base, LoraConfig(**lora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(os.path.join(out, name))
    os.remove(os.path.join(out, name, "README.md"))  # PEFT's model card template
    ref = {}
    for module_name, module in peft_model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            w = module.base_layer.weight.detach()
            delta = module.get_delta_weight("default").detach()
            key = module_name.removeprefix("base_model.model.") + ".weight"
            ref[key] = metrics(w, w.double() + delta.double())
            del ref[key]["max_abs"]
    peft_model.unload()
    return ref


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="crates/core/tests/fixtures/weights")
    p.add_argument("--gpt2", default="crates/core/tests/fixtures/gpt2")
    args = p.parse_args()
    torch.manual_seed(0)
    base, dense = make_pair(args.out)
    reference = {"top_k": TOP_K, "dense": dense}
    reference["adapter"] = make_adapter(base, args.out, "adapter", 3, r=4, lora_alpha=8,
                                        target_modules=["q_proj", "v_proj", "down_proj"])
    base = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(args.out, "base"))
    reference["adapter-rslora"] = make_adapter(base, args.out, "adapter-rslora", 4, r=6, lora_alpha=4,
                                               use_rslora=True, alpha_pattern={"up_proj": 12},
                                               target_modules=["k_proj", "up_proj"])
    gpt2 = transformers.AutoModelForCausalLM.from_pretrained(args.gpt2)
    reference["adapter-gpt2"] = make_adapter(gpt2, args.out, "adapter-gpt2", 5, r=2, lora_alpha=5,
                                             fan_in_fan_out=True, target_modules=["c_attn", "c_fc"])
    for d in ("base", "ft"):
        gen = os.path.join(args.out, d, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1, sort_keys=True)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
