"""Characters plus special tokens; the token list travels inside every checkpoint.

Token order: ``<pad>``, ``<s>``, ``</s>``, then one ``<label:NAME>`` per label, then the characters
(sorted). An extended vocabulary (incremental training on new data) appends new labels and
characters at the end, so the ids of an older model stay valid.

Framing of one tune (``encode_tune``)::

    <label:irish> <s> M : 6 / 8 \\n ... | ] </s>

The label token opens every tune; ``<s>`` marks where the ABC text starts; ``</s>`` ends it.
To generate, feed ``prefix(label)`` (plus the encoded prompt) and sample until ``</s>``.
"""

from __future__ import annotations

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIALS = (PAD, BOS, EOS)
_LABEL_PREFIX, _LABEL_SUFFIX = "<label:", ">"


def label_token(label: str) -> str:
    return f"{_LABEL_PREFIX}{label}{_LABEL_SUFFIX}"


def is_label_token(token: str) -> bool:
    return token.startswith(_LABEL_PREFIX) and token.endswith(_LABEL_SUFFIX) and len(token) > len(_LABEL_PREFIX) + 1


class Vocabulary:
    """Maps characters and special tokens to ids and back."""

    def __init__(self, tokens: list[str]):
        tokens = list(tokens)
        if tokens[: len(SPECIALS)] != list(SPECIALS):
            raise ValueError(f"a vocabulary starts with {list(SPECIALS)}, got {tokens[:3]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens in vocabulary")
        for tok in tokens[len(SPECIALS) :]:
            if len(tok) != 1 and not is_label_token(tok):
                raise ValueError(f"token {tok!r} is neither one character nor a label token")
        self.tokens = tokens
        self.index = {tok: i for i, tok in enumerate(tokens)}
        self.pad_id, self.bos_id, self.eos_id = (self.index[t] for t in SPECIALS)
        self.labels = [t[len(_LABEL_PREFIX) : -len(_LABEL_SUFFIX)] for t in tokens if is_label_token(t)]
        self.label_ids = [self.index[label_token(name)] for name in self.labels]
        self.chars = [t for t in tokens[len(SPECIALS) :] if not is_label_token(t)]

    @classmethod
    def build(cls, texts, labels) -> "Vocabulary":
        """A fresh vocabulary: specials, the labels in the given order, the characters sorted."""
        chars = set()
        for text in texts:
            chars.update(text)
        return cls([*SPECIALS, *(label_token(name) for name in labels), *sorted(chars)])

    def extended(self, texts, labels) -> tuple["Vocabulary", list[str], list[str]]:
        """This vocabulary plus the labels and characters it lacks, appended (old ids unchanged).

        Returns (vocabulary, new labels, new characters).
        """
        chars = set()
        for text in texts:
            chars.update(text)
        new_labels = [name for name in dict.fromkeys(labels) if label_token(name) not in self.index]
        new_chars = sorted(chars - set(self.chars))
        tokens = self.tokens + [label_token(n) for n in new_labels] + new_chars
        return Vocabulary(tokens), new_labels, new_chars

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and other.tokens == self.tokens

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens: {len(self.labels)} labels, {len(self.chars)} characters)"

    def label_token(self, label: str) -> int:
        """Id of the token that opens a tune of this label; KeyError lists the known labels."""
        try:
            return self.index[label_token(label)]
        except KeyError:
            raise KeyError(f"unknown label {label!r}; labels: {', '.join(self.labels)}") from None

    def label_index(self, label: str) -> int:
        """Position of the label in ``labels`` (the row of the model's label embedding)."""
        return self.labels.index(label)

    def missing(self, text: str) -> set[str]:
        return {ch for ch in set(text) if ch not in self.index or len(ch) != 1}

    def encode(self, text: str) -> list[int]:
        """Characters to ids; raises KeyError naming the first character the vocabulary lacks."""
        try:
            return [self.index[ch] for ch in text]
        except KeyError as err:
            raise KeyError(f"character {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids, specials: bool = False) -> str:
        """Ids to text; special and label tokens are dropped unless ``specials``."""
        out = []
        for i in ids:
            tok = self.tokens[int(i)]
            if len(tok) == 1 or specials:
                out.append(tok)
        return "".join(out)

    def prefix(self, label: str) -> list[int]:
        """What opens a tune: ``[<label:NAME>, <s>]``."""
        return [self.label_token(label), self.bos_id]

    def encode_tune(self, text: str, label: str) -> list[int]:
        """``[<label:NAME>, <s>, chars..., </s>]``."""
        return [*self.prefix(label), *self.encode(text), self.eos_id]
