"""Rule L2 of validator.scoring.tokens: which tokenizer.json files tokenizers 0.19.1 (what the
live validator runs under transformers 4.44) can deserialize at all."""
from __future__ import annotations

from typing import Any

from validator.scoring.tokens import TokenizerLoadError

# Component types of tokenizers 0.19.1 (its Python classes = the serialized "type" names).
# 0.23 adds the ByteLevel normalizer and the FixedLength pre-tokenizer.
_TYPES_0191 = {
    "normalizer": ("normalizers", frozenset({
        "BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "Nmt", "Precompiled", "Prepend", "Replace",
        "Sequence", "Strip", "StripAccents"})),
    "pre_tokenizer": ("pretokenizers", frozenset({
        "BertPreTokenizer", "ByteLevel", "CharDelimiterSplit", "Digits", "Metaspace", "Punctuation", "Sequence",
        "Split", "UnicodeScripts", "Whitespace", "WhitespaceSplit"})),
    "post_processor": ("processors", frozenset({
        "BertProcessing", "ByteLevel", "RobertaProcessing", "Sequence", "TemplateProcessing"})),
    "decoder": ("decoders", frozenset({
        "BPEDecoder", "ByteFallback", "ByteLevel", "CTC", "Fuse", "Metaspace", "Replace", "Sequence", "Strip",
        "WordPiece"})),
}
_MODELS_0191 = frozenset({"BPE", "Unigram", "WordLevel", "WordPiece"})


def check_tokenizers_0191_format(spec: Any) -> None:
    """Raise TokenizerLoadError when tokenizers 0.19.1 could not deserialize this tokenizer.json."""
    if not isinstance(spec, dict):
        raise TokenizerLoadError("tokenizer.json is not a JSON object")
    model = spec.get("model")
    if isinstance(model, dict):
        kind = model.get("type")
        if kind is not None and kind not in _MODELS_0191:
            raise TokenizerLoadError(f"tokenizer.json model type {kind!r} is unknown to tokenizers 0.19.1")
        if kind == "BPE" or (kind is None and "merges" in model):
            for i, merge in enumerate(model.get("merges") or ()):
                if not isinstance(merge, str):
                    raise TokenizerLoadError(
                        "tokenizer.json stores BPE merges as pairs (written by tokenizers >= 0.20); tokenizers "
                        "0.19.1, which the live validator runs, only reads 'a b' strings")
                if len(merge.split(" ")) != 2:
                    raise TokenizerLoadError(f"tokenizer.json BPE merge {i + 1} {merge!r} is not two parts "
                                             "separated by one space (tokenizers 0.19.1 refuses it)")
    for key, (nested, known) in _TYPES_0191.items():
        stack = [spec.get(key)]
        while stack:
            part = stack.pop()
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind is not None and kind not in known:
                raise TokenizerLoadError(f"tokenizer.json {key} type {kind!r} is unknown to tokenizers 0.19.1")
            if kind == "Sequence":
                stack.extend(part.get(nested) or ())
