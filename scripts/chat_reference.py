"""Chat templates rendered by NeuroDiff (minijinja) against transformers' `apply_chat_template`
(`utils/chat_template_utils.py` and `tokenization_utils_base.py` of the pinned version: the
rendered text, `tokenize=True`'s ids, and `return_assistant_tokens_mask` where a template marks
`{% generation %}`), on templates in the shapes the hub's use (ChatML, Llama 3, Gemma, tojson)
and on SmolLM2-135M-Instruct's own template from its GGUF.

  python scripts/chat_reference.py check NEURODIFF_BIN [--real]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import transformers

sys.path.insert(0, os.path.dirname(__file__))
from gguf_reference import smollm2  # noqa: E402

transformers.utils.logging.set_verbosity_error()

TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "crates", "core", "tests", "fixtures",
                         "gguf", "tiny-llama-st", "tokenizer.json")

CHATML_GENERATION = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}{% generation %}{{- message['content'] | trim }}{% endgeneration %}"
    "{%- else %}{{- message['content'] | trim }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

LLAMA3 = """{{- bos_token }}
{%- set ns = namespace(system='') %}
{%- if messages[0]['role'] == 'system' %}
    {%- set ns.system = messages[0]['content'] %}
    {%- set messages = messages[1:] %}
{%- endif %}
{%- if ns.system %}
    {{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.system + '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'].strip() + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

GEMMA = """{{ bos_token }}
{% for message in messages %}
{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}
{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}
{% if loop.last and add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}
{% endfor %}"""

TOJSON = ("{% for m in messages %}{{ m | tojson }}\n{% if loop.first %}{{ m | tojson(indent=2) }}\n"
          "{% endif %}{% endfor %}{{ {'n': messages | length, 'z': [1, 2.5, none, true]} | tojson(sort_keys=true) }}")

TEMPLATES = {"chatml-generation": CHATML_GENERATION, "llama3": LLAMA3, "gemma": GEMMA, "tojson": TOJSON}

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name three spices."},
     {"role": "assistant", "content": "Cumin, saffron, paprika."}],
    [{"role": "user", "content": "  padded question \n"},
     {"role": "assistant", "content": "  padded answer  "},
     {"role": "user", "content": "And the tides? 🌊 café"},
     {"role": "assistant", "content": "Twice a day, 日本 too.\n\nNew paragraph."}],
    [{"role": "user", "content": "quotes \" and \\ backslashes and <tags>"},
     {"role": "assistant", "content": "{\"json\": [1, 2]}"}],
]


def ours(binary, model, convs):
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "chats.jsonl"), os.path.join(tmp, "out.json")
        with open(src, "w") as f:
            for conv, generation in convs:
                f.write(json.dumps({"messages": conv, "add_generation_prompt": generation}) + "\n")
        subprocess.run([binary, "inspect", model, "--chat", src, "--out", out], check=True,
                       stderr=subprocess.DEVNULL)
        return json.load(open(out))


def compare(label, tok, got, convs, failures):
    for row, (conv, generation) in zip(got, convs):
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=generation)
        out = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=generation,
                                      return_dict=True, return_assistant_tokens_mask="{% generation %}" in (tok.chat_template or ""))
        where = f"{label} conversation {CONVERSATIONS.index(conv) if conv in CONVERSATIONS else '?'} (generation prompt {generation})"
        if row["text"] != text:
            failures.append(f"{where}: text differs:\n  ours   {row['text']!r}\n  theirs {text!r}")
        elif row["ids"] != out["input_ids"]:
            failures.append(f"{where}: ids differ")
        elif "assistant_masks" in out:
            mask = [int(r == "assistant") for r in row["roles"]]
            if mask != out["assistant_masks"]:
                failures.append(f"{where}: assistant tokens {mask} vs transformers' {out['assistant_masks']}")


def cmd_check(args):
    failures, checked = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in TEMPLATES.items():
            model = os.path.join(tmp, name)
            os.makedirs(model)
            shutil.copy(TOKENIZER, os.path.join(model, "tokenizer.json"))
            with open(os.path.join(model, "tokenizer_config.json"), "w") as f:
                json.dump({"chat_template": source, "bos_token": "<s>", "eos_token": "</s>",
                           "tokenizer_class": "PreTrainedTokenizerFast"}, f)
            tok = transformers.AutoTokenizer.from_pretrained(model)
            convs = [(c, g) for c in CONVERSATIONS for g in (False, True)]
            compare(name, tok, ours(args.bin, model, convs), convs, failures)
            checked += len(convs)
        if args.real:
            path = smollm2(os.path.expanduser("~/.cache/neurodiff/smollm2"))
            d, f = os.path.split(path)
            tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
            convs = [(c, g) for c in CONVERSATIONS for g in (False, True)]
            compare("SmolLM2 (GGUF template)", tok, ours(args.bin, path, convs), convs, failures)
            checked += len(convs)
    for f in failures:
        print("FAIL", f)
    print(f"chat templates: {checked} renderings, {len(failures)} differ {'ok' if not failures else 'FAIL'}")
    sys.exit(1 if failures else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("bin")
    c.add_argument("--real", action="store_true", help="also SmolLM2-135M-Instruct's template (GGUF)")
    args = p.parse_args()
    cmd_check(args)


if __name__ == "__main__":
    main()
