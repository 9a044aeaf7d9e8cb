"""Label texts and the text-domain templates used for PromptSRC's frozen label ensemble ("textual diversity").

A WordNet supersense label is shown to the encoder as ``"{name}: {desc}"``, e.g.
``"noun.animal: nouns denoting animals"``. PromptSRC averages the frozen CLIP text features of a
class over 60 image-caption templates ("a photo of a {}."); those make no sense for text, so the
ensemble here uses hand-written text-domain variants of the label (spec §1.8): the name alone, the
description alone, and a dozen sentences around them. The raw (un-normalised) pooled features are
averaged over the templates and normalised after averaging, as in the spec §1.4.
"""
from __future__ import annotations

LABEL_TEMPLATE = "{name}: {desc}"

TEXT_TEMPLATES: tuple[str, ...] = (
    "{name}: {desc}",
    "{desc}",
    "{name}",
    "{topic}",
    "This text is about {desc}.",
    "Topic: {desc}.",
    "A dictionary definition of one of the {desc}.",
    "A gloss of a word among the {desc}.",
    "WordNet category {name}: {desc}.",
    "A message concerning {topic}.",
    "A definition of a {pos} about {topic}.",
    "The meaning of a {pos} in the category {topic}.",
)


def label_fields(name: str, desc: str) -> dict[str, str]:
    """The template fields of a ``pos.topic`` supersense name: name, desc, topic, pos."""
    pos, _, topic = name.partition(".")
    return {"name": name, "desc": desc, "topic": topic.lower() or name, "pos": pos}


def label_text(name: str, desc: str, template: str = LABEL_TEMPLATE) -> str:
    """One label rendered through one template."""
    return template.format(**label_fields(name, desc))
