"""The model card (README.md) PEFT writes beside an adapter: YAML front matter plus a short text.

The front matter carries ``library_name: peft``, ``base_model`` when the base model's name is known,
and PEFT's tags (``lora`` for a LoRA adapter); the text lists each saved adapter's config. A card
already in the folder keeps its text and its other front-matter keys, as PEFT's update does.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

from ..io.atomic import write_bytes_atomic

CARD_NAME = "README.md"


def _split_front_matter(text: str) -> tuple[list[str], str]:
    """(the front-matter lines, the rest) of a card; no front matter gives ([], text)."""
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() == "---":
                return lines[1:i], "\n".join(lines[i + 1:]).lstrip("\n")
    return [], text


def _drop_keys(lines: list[str], keys: set[str]) -> list[str]:
    """Front-matter lines without the top-level ``keys`` (and the indented or list lines under them)."""
    out, skipping = [], False
    for line in lines:
        top = line[:1] not in (" ", "\t", "-") and ":" in line
        if top:
            skipping = line.split(":", 1)[0].strip() in keys
        if not skipping:
            out.append(line)
    return out


def _scalar(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def model_card_text(configs: dict[str, Any], base_model: str | None, existing: str | None = None) -> str:
    """The README.md text for the adapters ``configs`` ({adapter name: config with ``to_dict``}).

    >>> from peftc.tuners import LoraConfig
    >>> print(model_card_text({"default": LoraConfig(r=4)}, "bert-base-uncased").splitlines()[1:3])
    ['base_model: "bert-base-uncased"', 'library_name: peft']
    """
    front, body = _split_front_matter(existing) if existing else ([], "")
    ours = {"base_model", "library_name", "tags"} if base_model is not None else {"library_name", "tags"}
    front = _drop_keys(front, ours)
    tags = sorted({str(c.peft_type).lower() for c in configs.values() if str(c.peft_type) == "LORA"})
    head = ["---"]
    if base_model is not None:
        head.append(f"base_model: {_scalar(base_model)}")
    head.append("library_name: peft")
    if tags:
        head += ["tags:", *(f"- {t}" for t in tags)]
    head += [*front, "---", ""]
    if not body:
        body = "# Adapter\n\nAn adapter in Hugging Face PEFT's format, saved by peftc; load it with " \
               "`peft.PeftModel.from_pretrained` or `peftc.PeftModel.from_pretrained`.\n"
    sections = []
    for name, config in configs.items():
        title = f"## Adapter config: `{name}`"
        text = json.dumps(config.to_dict(), indent=2, sort_keys=True)
        # a section from an earlier save of this adapter is replaced
        body = re.sub(re.escape(title) + r"\n\n```json\n.*?\n```(?:\n\n?|$)", "", body, flags=re.DOTALL)
        sections.append(f"{title}\n\n```json\n{text}\n```\n")
    return "\n".join(head) + "\n" + body.rstrip("\n") + "\n" + ("\n" + "\n".join(sections) if sections else "")


def save_model_card(directory: str | os.PathLike, configs: dict[str, Any], base_model: str | None) -> str:
    """Write (or update) directory/README.md atomically; return its path.

    >>> import tempfile
    >>> from peftc import LoraConfig
    >>> folder = tempfile.mkdtemp()
    >>> save_model_card(folder, {"default": LoraConfig(r=8)}, base_model=None) == os.path.join(folder, "README.md")
    True
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CARD_NAME)
    existing = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            existing = fh.read()
    write_bytes_atomic(path, model_card_text(configs, base_model, existing).encode("utf-8"))
    return path
