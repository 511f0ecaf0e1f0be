"""Writes the seed corpus of the fuzz targets into tests/fuzz/corpus/ (committed; rerun only
to change the seeds). Pure Python: safetensors files are written byte by byte as the format
specifies (8-byte little-endian header length, JSON header, data)."""
import json
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fuzz" / "corpus"


def safetensors(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def f32(n, start=0.0):
    return b"".join(struct.pack("<f", start + i * 0.25) for i in range(n))


def write(target, name, content):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())


write("safetensors", "llama-two-tensors.safetensors", safetensors({
    "model.layers.0.mlp.down_proj.weight": ("F32", [2, 3], f32(6)),
    "model.embed_tokens.weight": ("F32", [4, 2], f32(8, 1.0)),
}, {"format": "pt"}))
write("safetensors", "bf16.safetensors", safetensors({
    "model.layers.1.self_attn.q_proj.weight": ("BF16", [2, 2], b"\x80\x3f" * 4),
}))
write("safetensors", "empty-tensor.safetensors", safetensors({
    "model.norm.weight": ("F32", [0], b""),
    "lm_head.weight": ("F16", [1, 2], b"\x00\x3c" * 2),
}))

llama = {"model_type": "llama", "hidden_size": 2, "intermediate_size": 3,
         "num_hidden_layers": 2, "num_attention_heads": 1, "num_key_value_heads": 1,
         "vocab_size": 4, "max_position_embeddings": 16, "rms_norm_eps": 1e-6,
         "rope_theta": 10000.0, "tie_word_embeddings": False,
         "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
write("config", "llama.json", json.dumps(llama, indent=1))
write("config", "gpt2.json", json.dumps({"model_type": "gpt2", "n_embd": 2, "n_layer": 12,
                                          "n_head": 1, "vocab_size": 4, "n_positions": 16}))

write("index", "two-shards.json", json.dumps({
    "metadata": {"total_size": 56},
    "weight_map": {"model.layers.0.mlp.down_proj.weight": "model-00001-of-00002.safetensors",
                   "model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}, indent=1))

write("adapter_config", "lora.json", json.dumps({
    "peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_rslora": False, "fan_in_fan_out": False,
    "target_modules": ["q_proj", "v_proj"], "alpha_pattern": {"q_proj": 8}, "rank_pattern": {},
    "base_model_name_or_path": "org/base"}, indent=1))

for i, s in enumerate(["all", "0,3,5-7", "0-2,2", " 4 , 1-3 ", "10-12,0"]):
    write("layers", f"seed-{i}.txt", s)

for i, s in enumerate(["/models/llama/ckpt", "/teams/blue/x", "s3://models/shared/llama",
                       "s3://models/teams/blue/m%20x", "meta-llama/Llama-3.1-8B@main",
                       "org/name@refs/pr/1", "org/name@0123456789abcdef0123456789abcdef01234567"]):
    write("reference", f"seed-{i}.txt", s)

for i, body in enumerate([
    {"base": "/models/a", "finetuned": "/models/b"},
    {"base": "org/a", "adapter": "/models/lora", "layers": [0, 3, 3], "analyses": ["weights"]},
    {"base": "s3://models/shared/a", "finetuned": "org/b@v1",
     "weights": {"spectrum": "none", "top_k": 4}},
]):
    write("request", f"seed-{i}.json", json.dumps(body))

# Corpus files as a worker reads them: plain text (one sample per line, long and empty lines,
# Unicode and control characters), JSON Lines with a `text` field.
write("corpus", "lines.txt", "fn main() {\n\n    println!(\"héllo — 世界\");\n"
      + "x" * 300 + "\n\t tab\r\n}\n")
write("corpus", "samples.jsonl", "\n".join(json.dumps(o) for o in [
    {"text": "The quick brown fox."}, {"text": ""}, {"text": "a\u0000b \U0001F642 " * 20},
    {"txt": "no text field"}, {"text": 12}]) + "\n")
