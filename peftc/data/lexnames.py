"""The 45 WordNet 3.0 lexicographer files: number, name and one-line description.

Transcribed from the lexnames(5WN) man page of WordNet 3.0 (Debian package ``wordnet-base``).
Numbers 3..28 are the noun files, 29..43 the verb files; 0-2 and 44 hold adjectives and adverbs.
"""
from __future__ import annotations

# (file number, lexicographer file name, description from the man page)
LEXNAMES: tuple[tuple[int, str, str], ...] = (
    (0, "adj.all", "all adjective clusters"),
    (1, "adj.pert", "relational adjectives (pertainyms)"),
    (2, "adv.all", "all adverbs"),
    (3, "noun.Tops", "unique beginner for nouns"),
    (4, "noun.act", "nouns denoting acts or actions"),
    (5, "noun.animal", "nouns denoting animals"),
    (6, "noun.artifact", "nouns denoting man-made objects"),
    (7, "noun.attribute", "nouns denoting attributes of people and objects"),
    (8, "noun.body", "nouns denoting body parts"),
    (9, "noun.cognition", "nouns denoting cognitive processes and contents"),
    (10, "noun.communication", "nouns denoting communicative processes and contents"),
    (11, "noun.event", "nouns denoting natural events"),
    (12, "noun.feeling", "nouns denoting feelings and emotions"),
    (13, "noun.food", "nouns denoting foods and drinks"),
    (14, "noun.group", "nouns denoting groupings of people or objects"),
    (15, "noun.location", "nouns denoting spatial position"),
    (16, "noun.motive", "nouns denoting goals"),
    (17, "noun.object", "nouns denoting natural objects (not man-made)"),
    (18, "noun.person", "nouns denoting people"),
    (19, "noun.phenomenon", "nouns denoting natural phenomena"),
    (20, "noun.plant", "nouns denoting plants"),
    (21, "noun.possession", "nouns denoting possession and transfer of possession"),
    (22, "noun.process", "nouns denoting natural processes"),
    (23, "noun.quantity", "nouns denoting quantities and units of measure"),
    (24, "noun.relation", "nouns denoting relations between people or things or ideas"),
    (25, "noun.shape", "nouns denoting two and three dimensional shapes"),
    (26, "noun.state", "nouns denoting stable states of affairs"),
    (27, "noun.substance", "nouns denoting substances"),
    (28, "noun.time", "nouns denoting time and temporal relations"),
    (29, "verb.body", "verbs of grooming, dressing and bodily care"),
    (30, "verb.change", "verbs of size, temperature change, intensifying, etc."),
    (31, "verb.cognition", "verbs of thinking, judging, analyzing, doubting"),
    (32, "verb.communication", "verbs of telling, asking, ordering, singing"),
    (33, "verb.competition", "verbs of fighting, athletic activities"),
    (34, "verb.consumption", "verbs of eating and drinking"),
    (35, "verb.contact", "verbs of touching, hitting, tying, digging"),
    (36, "verb.creation", "verbs of sewing, baking, painting, performing"),
    (37, "verb.emotion", "verbs of feeling"),
    (38, "verb.motion", "verbs of walking, flying, swimming"),
    (39, "verb.perception", "verbs of seeing, hearing, feeling"),
    (40, "verb.possession", "verbs of buying, selling, owning"),
    (41, "verb.social", "verbs of political and social activities and events"),
    (42, "verb.stative", "verbs of being, having, spatial relations"),
    (43, "verb.weather", "verbs of raining, snowing, thawing, thundering"),
    (44, "adj.ppl", "participial adjectives"),
)


def lexname(number: int) -> str:
    """The lexicographer file name for a file number (0..44)."""
    if not 0 <= number < len(LEXNAMES):
        raise ValueError(f"lexicographer file number must be in [0, {len(LEXNAMES)}), got {number}")
    return LEXNAMES[number][1]
