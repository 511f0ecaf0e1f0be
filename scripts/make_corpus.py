"""Builds NeuroDiff's built-in generic corpus from text installed by package managers, offline.

Sources (both may be redistributed; see crates/core/corpus/README.md):
  * the prose of the Rust documentation books installed by rustup's `rust-docs` component
    (The Rust Programming Language, the Reference, Rust by Example, the Rustonomicon, the
    Edition Guide, the Cargo, rustc, rustdoc, Embedded, Style and Unstable books, the error
    index): MIT OR Apache-2.0;
  * the prose of the API documentation of std, core, alloc and proc_macro from the same
    component (MIT OR Apache-2.0);
  * the docstrings of CPython's standard library and the Language Reference topics pydoc ships
    (pydoc_data), of the interpreter running this script: PSF-2.0.

JSON Lines, one sample per line in a `text` field: a paragraph or list item (whitespace
collapsed) or a code block from the books (lines kept), at least 40 characters, deduplicated, in
a fixed order (sorted files). Written gzip-compressed with a fixed mtime, so the
same inputs give the same bytes.

    python scripts/make_corpus.py --rust-docs ~/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu/share/doc/rust/html \
        --out crates/core/corpus/generic.jsonl.gz
"""
import argparse
import ast
import gzip
import html
import io
import json
import os
import re
import sys

BOOKS = ["book", "reference", "rust-by-example", "nomicon", "edition-guide", "cargo", "rustc",
         "rustdoc", "embedded-book", "style-guide", "unstable-book", "error_codes"]
# The API documentation's prose (docblocks) of the standard library crates.
API_DOCS = ["std", "core", "alloc", "proc_macro"]
BLOCK = re.compile(r"<(p|li)\b[^>]*>(.*?)</\1>", re.S | re.I)
TAG = re.compile(r"<[^>]+>")
MIN_CHARS = 40


def clean(text):
    return " ".join(html.unescape(TAG.sub("", text)).split())


PRE = re.compile(r"<pre\b[^>]*>(.*?)</pre>", re.S | re.I)


def code(text):
    lines = [line.rstrip() for line in html.unescape(TAG.sub("", text)).strip("\n").split("\n")]
    return "\n".join(lines).strip()


def rust_books(root):
    for book in BOOKS:
        base = os.path.join(root, book)
        for d, dirs, files in os.walk(base):
            # The 2018 and first editions of the book are redirect stubs.
            dirs[:] = sorted(x for x in dirs if x not in ("2018-edition", "first-edition",
                                                          "second-edition", "theme", "fonts"))
            for f in sorted(files):
                if not f.endswith(".html") or f in ("print.html", "404.html", "toc.html"):
                    continue
                page = open(os.path.join(d, f), encoding="utf-8", errors="replace").read()
                main = re.search(r"<main>(.*?)</main>", page, re.S)
                if not main:
                    continue
                for _, body in BLOCK.findall(main.group(1)):
                    yield clean(body)
                for body in PRE.findall(main.group(1)):
                    yield code(body)


def api_docs(root):
    for crate in API_DOCS:
        for d, dirs, files in os.walk(os.path.join(root, crate)):
            dirs.sort()
            for f in sorted(files):
                if not f.endswith(".html"):
                    continue
                page = open(os.path.join(d, f), encoding="utf-8", errors="replace").read()
                for block in re.findall(r'<div class="docblock[^"]*">(.*?)</div>', page, re.S):
                    for _, body in BLOCK.findall(block):
                        yield clean(body)


def python_docstrings():
    root = os.path.dirname(os.__file__)
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "test", "tests",
                                                      "idle_test", "__pycache__"))
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            try:
                tree = ast.parse(open(os.path.join(d, f), encoding="utf-8").read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    for para in re.split(r"\n\s*\n", doc or ""):
                        yield " ".join(para.split())


def python_reference():
    """The Python Language Reference's topics, as pydoc ships them."""
    from pydoc_data.topics import topics
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            yield " ".join(para.split())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust-docs", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    seen, lines = set(), []
    for text in list(rust_books(a.rust_docs)) + list(api_docs(a.rust_docs)) + list(python_docstrings()) + list(python_reference()):
        if len(text) >= MIN_CHARS and text not in seen:
            seen.add(text)
            lines.append(text)
    data = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in lines).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as z:
        z.write(data)
    open(a.out, "wb").write(buf.getvalue())
    print(f"{len(lines)} samples, {len(data)} bytes, {len(buf.getvalue())} compressed "
          f"(Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
