"""Which benchmark.json entries a validator would refuse before scoring them: the checks of
validator.adapters.hub on a download (repo size, download set, safetensors only, model type,
parameters) and the tokenizer rule of validator.scoring.tokens. A refused entry is shown as
"would be refused: <reason>" instead of a verdict."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from validator.core.failures import FetchError

def tokenizer_refusal(path: Path, competition: Any) -> str | None:
    """Why a validator could not tokenize for this model dir, or None (validator.scoring.tokens C1-C4):
    with a competition tokenizer there is always one to use; without, the dir's own
    tokenizer.json must load under the 4.44 rules."""
    from validator.scoring import tokens

    if getattr(competition, "tokenizer", None):
        return None
    if not (Path(path) / "tokenizer.json").is_file():
        return (f"tokenizer: competition {competition.id} has no tokenizer and {path} holds no tokenizer.json: "
                "a validator does not evaluate it")
    try:
        tokens.plan_tokenizer(path, role="model")
    except tokens.TokenizerLoadError as e:
        return f"tokenizer: {e} (competition {competition.id} has no tokenizer to fall back on)"
    return None


def validator_refusal(path: Path, competition: Any) -> str | None:
    """Why a validator would refuse this model dir for the competition before scoring it, or
    None: repo size, download set, safetensors only, model type, parameters (the checks of
    validator.adapters.hub on a download) and the tokenizer rule."""
    from validator.adapters import hub

    try:
        hub.check_model_constraints(path, competition)
    except FetchError as e:
        return str(e)
    return tokenizer_refusal(Path(path), competition)



def entry_kind(e: Any) -> str:
    """An Entry's role here: a chain uid, a local incumbent (has a block) or a candidate."""
    return "chain" if e.uid is not None else ("benchmark" if e.block is not None else "candidate")


def refused_entries(path: Path, competitions: dict, bench: list, problems: list[str]) -> list[dict]:
    """The benchmark.json entries a validator would refuse before scoring, each
    {"key", "label", "kind", "competition", "reason": "would be refused: ..."}: those
    `benchmark_entries` let through (`bench`) that fail `validator_refusal`, and those
    it skipped because their files break the hub's rules (their problem line is taken out of
    `problems`: a refusal is a verdict, not a typo)."""
    from validator.adapters.candidates import load_benchmark

    out = []
    for e in bench:
        reason = validator_refusal(e.path, competitions[e.competition])
        if reason is not None:
            e.status, e.reason = "refused", f"would be refused: {reason}"
            out.append({"key": e.key, "label": e.label, "kind": entry_kind(e), "competition": e.competition,
                        "reason": e.reason})
    parsed, _errors = load_benchmark(path)
    kept = {e.key for e in bench}
    for bid, b in parsed.items():
        if f"bench:{bid}" in kept or b.competition not in competitions or not Path(b.path).is_dir():
            continue
        reason = validator_refusal(b.path, competitions[b.competition])
        if reason is None:
            continue
        prefix = f"benchmark entry {bid!r}:"
        problems[:] = [p for p in problems if not p.startswith(prefix)]
        out.append({"key": f"bench:{bid}", "label": b.label or bid, "competition": b.competition,
                    "kind": "candidate" if b.block is None else "benchmark", "reason": f"would be refused: {reason}"})
    return out
