"""Building the tokenizer transformers 4.44 would build, from a planned dir's tokenizer.json.

validator.scoring.tokens states the rules and makes the plan (which class, from which files);
here rules L2 and L4-L8 are applied with the `tokenizers` library: tokenizer.json's format
check, the keyword arguments of the class, the added and special tokens, the class's own
post-processor and pre-tokenizer changes, truncation and padding off, and decode's clean-up.
Only JSON is read; nothing in the dir is executed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import constants
from validator.scoring.tokenizer_format import check_tokenizers_0191_format
from validator.scoring.tokens import (CLASSES, Role, TokenizerError, TokenizerLoadError, TokenizerPlan, plan_tokenizer,
                                      read_bytes, read_json)


# --- rule L8: decode clean-up -------------------------------------------------------------------

_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def clean_up_tokenization(text: str) -> str:
    """PreTrainedTokenizerBase.clean_up_tokenization of 4.44: ten replacements, in this order."""
    for old, new in _CLEAN_UP:
        text = text.replace(old, new)
    return text


# --- rules L4-L6: keyword arguments and special tokens ----------------------------------------

SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                             "mask_token", "additional_special_tokens")
# Methods of 4.44's PreTrainedTokenizerFast: a tokenizer_config key with such a name makes
# PreTrainedTokenizerBase.__init__ raise AttributeError.
_METHOD_NAMES = frozenset({
    "__call__", "__init__", "__len__", "__repr__", "_add_tokens", "_batch_encode_plus", "_call_one",
    "_compile_jinja_template", "_convert_encoding", "_convert_id_to_token", "_convert_token_to_id_with_added_voc",
    "_create_repo", "_decode", "_encode_plus", "_eventual_warn_about_too_long_sequence",
    "_eventually_correct_t5_max_length", "_from_pretrained", "_get_files_timestamps",
    "_get_padding_truncation_strategies", "_pad", "_render_with_assistant_indices", "_save_pretrained",
    "_set_processor_class", "_switch_to_input_mode", "_switch_to_target_mode", "_upload_modified_files",
    "add_special_tokens", "add_tokens", "apply_chat_template", "as_target_tokenizer", "batch_decode",
    "batch_encode_plus", "build_inputs_with_special_tokens", "clean_up_tokenization", "convert_added_tokens",
    "convert_ids_to_tokens", "convert_tokens_to_ids", "convert_tokens_to_string",
    "create_token_type_ids_from_sequences", "decode", "encode", "encode_plus", "from_pretrained",
    "get_added_vocab", "get_chat_template", "get_special_tokens_mask", "get_vocab", "num_special_tokens_to_add",
    "pad", "prepare_for_model", "prepare_seq2seq_batch", "push_to_hub", "register_for_auto_class",
    "sanitize_special_tokens", "save_pretrained", "save_vocabulary", "set_truncation_and_padding", "tokenize",
    "train_new_from_iterator", "truncate_sequences",
})



def _token_flags(token: Any) -> tuple:
    """What repr(AddedToken) shows: the identity 4.44 compares added tokens by."""
    return (token.content, token.rstrip, token.lstrip, token.single_word, token.normalized, token.special)


def _convert_added_tokens(obj: Any) -> Any:
    """PreTrainedTokenizerBase.convert_added_tokens(save=False): {"__type": "AddedToken", ...} -> AddedToken."""
    from tokenizers import AddedToken

    if isinstance(obj, dict) and obj.get("__type") == "AddedToken":
        return AddedToken(**{k: v for k, v in obj.items() if k != "__type"})
    if isinstance(obj, (list, tuple)):
        return [_convert_added_tokens(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _convert_added_tokens(v) for k, v in obj.items()}
    return obj


def _init_kwargs(plan: TokenizerPlan, spec: dict) -> tuple[dict, dict]:
    """(kwargs, added_tokens_decoder) as 4.44's _from_pretrained hands them to the class (rule L4)."""
    from tokenizers import AddedToken

    init = {k: v for k, v in plan.config.items() if k not in ("tokenizer_class", "init_inputs")}
    decoder: dict = {}
    added_map: dict = {}
    if "added_tokens_decoder" in init:
        entries = init["added_tokens_decoder"]
        if not isinstance(entries, dict):
            raise TokenizerLoadError("tokenizer_config.json added_tokens_decoder is not an object")
        for idx, token in entries.items():
            if not isinstance(token, dict):
                raise TokenizerLoadError(f"added_tokens_decoder[{idx!r}] is not an object")
            token = AddedToken(**token)
            decoder[int(idx)] = token
            added_map[str(token)] = token
    else:  # an old save: special_tokens_map.json, added_tokens.json, tokenizer.json's added tokens
        last_token = None  # 4.44 keys one map entry by a stale loop variable (the hub token, None)
        special_map = read_json(plan.path / "special_tokens_map.json")
        if special_map is not None:
            if not isinstance(special_map, dict):
                raise TokenizerLoadError("special_tokens_map.json is not a JSON object")
            for key, value in special_map.items():
                if isinstance(value, dict):
                    value = AddedToken(**{**value, "special": True})
                elif key == "additional_special_tokens" and isinstance(value, list):
                    extra = init.pop("additional_special_tokens", []) or []
                    for token in value:
                        if isinstance(token, dict):
                            token = AddedToken(**{**token, "special": True})
                        last_token = token
                        if token not in extra:
                            extra.append(token)
                    value = extra
                init[key] = value
        added = read_json(plan.path / "added_tokens.json")
        if added is not None:
            if not isinstance(added, dict):
                raise TokenizerLoadError("added_tokens.json is not a JSON object")
            specials = []
            for key in SPECIAL_TOKENS_ATTRIBUTES:
                if init.get(key) is not None:
                    specials += [str(t) for t in init[key]] if key == "additional_special_tokens" else [str(init[key])]
            for text, index in added.items():
                special = text in specials
                decoder[index] = AddedToken(text, rstrip=False, lstrip=False, normalized=not special, special=special)
                added_map[str(last_token)] = decoder[index]
        for entry in spec.get("added_tokens") or ():
            token = AddedToken(**{k: v for k, v in entry.items() if k != "id"})
            decoder[entry["id"]] = token
            added_map[str(token)] = token
    init["added_tokens_decoder"] = decoder
    init = _convert_added_tokens(init)
    decoder = init.pop("added_tokens_decoder")
    if added_map:
        for key in SPECIAL_TOKENS_ATTRIBUTES[:-1]:
            if init.get(key) is not None:
                init[key] = added_map.get(str(init[key]), init[key])
    return init, decoder


@dataclass
class LiveTokenizer:
    """A tokenizer as 4.44 builds it: encode / decode / eos_token_id the way the live validator calls them."""
    plan: TokenizerPlan
    backend: Any  # tokenizers.Tokenizer
    eos_token_id: int | None
    bos_token_id: int | None
    clean_up: bool
    special_tokens: dict[str, Any]

    @property
    def key(self) -> str:
        return self.plan.key

    @property
    def class_name(self) -> str:
        return self.plan.class_name

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """tokenizer(text, truncation=False)["input_ids"]: special tokens added by the post-processor."""
        try:
            return list(self.backend.encode(text, add_special_tokens=True).ids)
        except Exception as e:  # noqa: BLE001 - live: any error in tokenize() rejects the tokenizer
            raise TokenizerError(f"encode failed: {type(e).__name__}: {e}") from e

    def decode(self, ids: Sequence[int]) -> str:
        """tokenizer.decode(ids): special tokens kept, then the clean-up when set (rule L8)."""
        try:
            text = self.backend.decode(list(ids), skip_special_tokens=False)
        except Exception as e:  # noqa: BLE001 - as in encode
            raise TokenizerError(f"decode failed: {type(e).__name__}: {e}") from e
        return clean_up_tokenization(text) if self.clean_up else text


def build_tokenizer(plan: TokenizerPlan) -> LiveTokenizer:
    """Parse tokenizer.json and apply rules L2, L4-L8; raises TokenizerLoadError."""
    try:
        return _build(plan)
    except TokenizerLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - a miner's files can be broken in any way; 4.44 fails too
        raise TokenizerLoadError(f"{type(e).__name__}: {e}") from e


def _build(plan: TokenizerPlan) -> LiveTokenizer:
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers, processors

    rules = CLASSES[plan.class_name]
    raw = read_bytes(plan.path / "tokenizer.json", constants.TOKENIZER_JSON_MAX_BYTES).decode("utf-8")
    spec = json.loads(raw)
    if plan.role == "model":  # the competition's own tokenizer may be a newer save (see resolve_class)
        check_tokenizers_0191_format(spec)
    init, added_decoder = _init_kwargs(plan, spec)
    for key in init:
        if key in _METHOD_NAMES:
            raise TokenizerLoadError(f"tokenizer_config.json key {key!r} conflicts with a tokenizer method")
    if rules.slow_on_prefix_space and init.get("add_prefix_space") is not None:
        raise TokenizerLoadError(f"{plan.class_name} with add_prefix_space set converts from the slow tokenizer, "
                                 "which needs the sentencepiece package")
    kw = {**rules.defaults, **init}  # the class's keyword defaults fill what the files leave out
    backend = Tokenizer.from_str(raw)
    if backend.padding is not None:
        kw.setdefault("pad_token", backend.padding["pad_token"])
    if rules.wrap_special:
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            if isinstance(kw.get(key), str):
                kw[key] = AddedToken(kw[key], lstrip=False, rstrip=False, special=True, normalized=False)
    for side in ("padding_side", "truncation_side"):
        if kw.get(side, rules.padding_side if side == "padding_side" else "right") not in ("right", "left"):
            raise TokenizerLoadError(f"{side} must be 'right' or 'left', got {kw[side]!r}")
    template = kw.get("chat_template")
    if isinstance(template, (list, tuple)) and not all(isinstance(t, dict) and "name" in t and "template" in t
                                                        for t in template):
        raise TokenizerLoadError("chat_template is a list without name/template entries")
    specials = _special_tokens(kw)
    backend.no_truncation()  # rule L7: truncation=False, no padding
    backend.no_padding()
    split = kw.get("split_special_tokens", False)
    if not isinstance(split, bool):
        raise TokenizerLoadError(f"split_special_tokens must be a boolean, got {split!r}")
    backend.encode_special_tokens = split
    _add_tokens(backend, added_decoder, specials)

    unk = specials.get("unk_token")

    def token_id(token: Any) -> int | None:  # convert_tokens_to_ids: the unk id for an unknown token
        if token is None:
            return None
        found = backend.token_to_id(str(token))
        if found is None and unk is not None:
            found = backend.token_to_id(str(unk))
            if found is None:
                raise TokenizerLoadError(f"unk_token {str(unk)!r} is not in the vocabulary (4.44 recurses)")
        return found

    if rules.refuses_bos and kw.get("add_bos_token", False):
        raise TokenizerLoadError(f"{plan.class_name} refuses add_bos_token")
    if rules.post_processor is not None:
        add_bos = kw.get("add_bos_token", rules.post_processor[0])
        add_eos = kw.get("add_eos_token", rules.post_processor[1])
        bos, eos = specials.get("bos_token"), specials.get("eos_token")
        if bos is None and add_bos:
            raise TokenizerLoadError("add_bos_token = True but bos_token = None")
        if eos is None and add_eos:
            raise TokenizerLoadError("add_eos_token = True but eos_token = None")
        single = f"{(str(bos) + ':0 ') if add_bos else ''}$A:0{(' ' + str(eos) + ':0') if add_eos else ''}"
        pair = f"{single}{(' ' + str(bos) + ':1') if add_bos else ''} $B:1{(' ' + str(eos) + ':1') if add_eos else ''}"
        ids = ([(str(bos), token_id(bos))] if add_bos else []) + ([(str(eos), token_id(eos))] if add_eos else [])
        backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)
    if rules.prefix_space:
        add_prefix_space = kw.get("add_prefix_space", False)
        if backend.pre_tokenizer is None:
            raise TokenizerLoadError(f"{plan.class_name} needs a pre-tokenizer (4.44 reads its add_prefix_space)")
        state = json.loads(backend.pre_tokenizer.__getstate__())
        if state.get("add_prefix_space", add_prefix_space) != add_prefix_space:
            if not isinstance(add_prefix_space, bool):
                raise TokenizerLoadError(f"add_prefix_space must be a boolean, got {add_prefix_space!r}")
            pre_class = getattr(pre_tokenizers, state.pop("type"))
            state["add_prefix_space"] = add_prefix_space
            backend.pre_tokenizer = pre_class(**state)
    return LiveTokenizer(plan, backend, eos_token_id=token_id(specials.get("eos_token")),
                         bos_token_id=token_id(specials.get("bos_token")),
                         clean_up=bool(kw.get("clean_up_tokenization_spaces", True)), special_tokens=specials)


def _special_tokens(kw: dict) -> dict[str, Any]:
    """SpecialTokensMixin.__init__: the special tokens set, with its type checks."""
    from tokenizers import AddedToken

    out = {}
    for key in SPECIAL_TOKENS_ATTRIBUTES:
        value = kw.get(key)
        if value is None:
            continue
        if key == "additional_special_tokens":
            if not isinstance(value, (list, tuple)) or not all(isinstance(t, (str, AddedToken)) for t in value):
                raise TokenizerLoadError("additional_special_tokens must be a list of strings or AddedTokens")
        elif not isinstance(value, (str, AddedToken)):
            raise TokenizerLoadError(f"special token {key} must be a string or AddedToken, got {type(value).__name__}")
        out[key] = value
    return out


def _special_extended(specials: dict[str, Any]) -> list[Any]:
    """all_special_tokens_extended: set (truthy) values in attribute order, first of each text kept."""
    out, seen = [], set()
    for key in SPECIAL_TOKENS_ATTRIBUTES:
        value = specials.get(key)
        if not value:
            continue
        for token in (value if isinstance(value, (list, tuple)) else [value]):
            if str(token) not in seen:
                seen.add(str(token))
                out.append(token)
    return out


def _add_tokens(backend: Any, added_decoder: dict, specials: dict[str, Any]) -> None:
    """Rule L5: PreTrainedTokenizerFast.__init__'s added-token pass, call for call."""
    from tokenizers import AddedToken

    have = {_token_flags(t) for t in backend.get_added_tokens_decoder().values()}
    to_add = [t for _, t in sorted(added_decoder.items(), key=lambda kv: kv[0]) if _token_flags(t) not in have]
    encoder = [t.content for _, t in sorted(backend.get_added_tokens_decoder().items())] + [str(t) for t in to_add]
    extended = _special_extended(specials)
    # `in` as 4.44 evaluates it: an AddedToken never equals a str, AddedTokens compare all fields
    to_add += [t for t in extended if t not in encoder and t not in to_add]
    special_texts = [str(t) for t in extended]
    run: list = []
    run_special = None
    for token in to_add:
        special = (token.special or str(token) in special_texts) if isinstance(token, AddedToken) \
            else str(token) in special_texts
        if run and special != run_special:
            (backend.add_special_tokens if run_special else backend.add_tokens)(run)
            run = []
        run.append(token)
        run_special = special
    if run:
        (backend.add_special_tokens if run_special else backend.add_tokens)(run)


def load_tokenizer(path: str | Path, *, role: Role = "model") -> LiveTokenizer:
    """plan_tokenizer + build_tokenizer; raises TokenizerLoadError."""
    return build_tokenizer(plan_tokenizer(path, role=role))


class LazyTokenizer:
    """A plan whose tokenizer is built on first use: a step served from the token cache never parses
    tokenizer.json (cache entries exist only under a key whose build succeeded)."""

    def __init__(self, plan: TokenizerPlan) -> None:
        self.plan = plan
        self._built: LiveTokenizer | None = None

    @property
    def key(self) -> str:
        return self.plan.key

    @property
    def tokenizer(self) -> LiveTokenizer:
        if self._built is None:
            self._built = build_tokenizer(self.plan)
        return self._built

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id


