"""The console leaderboard: the consensus table in a step's rendering."""
import io

from rich.console import Console

from validator.adapters import leaderboard as L
from validator.adapters.step_report import step_to_report

CONSENSUS = {
    "block": 4321, "vtrust": 0.412, "vtrust_if_set": 0.43, "l1_to_consensus": 1.176, "agreement": 0.35,
    "consensus_sum": 1.0, "consensus_weights": {"5": 0.5, "6": 0.3}, "ours": {"8": 0.5, "6": 0.3},
    "validators": [
        {"uid": 20, "hotkey": "5HvalidatorA", "stake": 100.0, "stake_share": 0.625, "age_blocks": 12,
         "n_weights": 4, "cosine": 0.31, "l1": 1.2, "vtrust": 1.0},
        {"uid": 21, "hotkey": "5HvalidatorB", "stake": 60.0, "stake_share": 0.375, "age_blocks": 300,
         "n_weights": 4, "cosine": 0.4, "l1": 1.1, "vtrust": 0.9}],
    "top_differences": [
        {"uid": 5, "hotkey": "5Fminer5xx", "ours": 0.0, "consensus": 0.5, "diff": -0.5, "status": "failed",
         "reason": "hash: secure hash does not match", "win_rate": None, "competition": "c00"},
        {"uid": 8, "hotkey": "5Fminer8xx", "ours": 0.5, "consensus": 0.0, "diff": 0.5, "status": "scored",
         "reason": None, "win_rate": 0.812, "competition": "c00"},
        {"uid": 9, "hotkey": "5Fminer9xx", "ours": 0.0, "consensus": 0.1, "diff": -0.1, "status": "not visited",
         "reason": None, "win_rate": None, "competition": None}],
    "notes": ["validators [22] count with stake but hold no weights (the chain counts them as 0s)"],
}


def text_of(renderable, width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue()


def rows(text: str) -> dict[str, str]:
    """Table body lines by their first cell."""
    return {line.split()[1]: line for line in text.splitlines() if line.startswith("│")}


def test_consensus_table_names_trust_and_the_uids_with_their_reasons():
    text = text_of(L.consensus_table(CONSENSUS))
    assert "estimated vtrust 0.412" in text and "0.430 with our stake" in text and "L1 to consensus 1.176" in text
    assert "2 validators" in text and "hold no weights" in text
    body = rows(text)
    assert list(body) == ["5", "8", "9"]
    assert "-0.5000" in body["5"] and "failed: hash: secure hash does not match" in body["5"]
    assert "+0.5000" in body["8"] and "0.812" in body["8"] and "scored" in body["8"]
    assert "not visited" in body["9"] and "5Fminer9" in body["9"]


def test_warning_is_shown():
    text = text_of(L.consensus_table({**CONSENSUS, "warning": "estimated validator trust 0.412 below 0.8"}))
    assert "! estimated validator trust 0.412 below 0.8" in text


def test_validators_table_is_short_and_largest_stake_first():
    many = {**CONSENSUS, "validators": [dict(CONSENSUS["validators"][0], uid=100 + i, stake_share=0.05)
                                        for i in range(12)]}
    text = text_of(L.consensus_validators_table(many, limit=3))
    assert "largest 3 of 12" in text and list(rows(text)) == ["100", "101", "102"]
    text = text_of(L.consensus_validators_table(CONSENSUS))
    assert "62.5" in rows(text)["20"] and "300" in rows(text)["21"]


def test_render_shows_consensus_only_when_the_step_has_it():
    step = {"step": 2, "block": 4321, "competitions": {}, "weights": {"8": 0.5}, "hotkeys": {}}
    assert "estimated vtrust" not in text_of(L.render(step))
    text = text_of(L.render({**step, "consensus": CONSENSUS}))
    assert "estimated vtrust 0.412" in text and "validators in the consensus" in text


def test_step_to_report_carries_consensus_with_the_chain_win_rates_of_the_table():
    # uid 8's win rate over every entry (a benchmark candidate beat it) is not what its weight comes from
    step = {"step": 2, "block": 4321, "consensus": CONSENSUS, "competitions": {"c00": {"models": [
        {"label": "uid 8", "uid": 8, "status": "scored", "win_rate": 0.25, "chain_win_rate": 0.9}]}}}
    out = step_to_report(step)["consensus"]
    assert [d["win_rate"] for d in out["top_differences"]] == [None, 0.9, None]
    assert out["vtrust"] == CONSENSUS["vtrust"] and CONSENSUS["top_differences"][1]["win_rate"] == 0.812  # a copy
    assert "0.900" in rows(text_of(L.render(step)))["8"]
    assert "consensus" not in step_to_report({"step": 2, "block": 1, "competitions": {}})


# --- the competition table: one set of numbers, every model, a legend ------------------------------

def _row(label, uid, **kw):
    base = {"label": label, "uid": uid, "hotkey": None if uid is None else f"5Hot{uid}xxxxxx", "block": 100,
            "age_blocks": 50, "status": "scored", "reason": None, "win_rate": None, "chain_win_rate": None,
            "abs_win_rate": None, "advantage": None, "weight": None, "pool": None, "tokenizer": None,
            "tokenizer_reason": None, "loss_per_token": None}
    return {**base, **kw}


# A step report by hand, shaped as Validator.step writes it: a candidate leads every entry, so the
# chain models' win rates over every entry (win_rate) differ from the chain rule's (chain_win_rate).
STEP = {"step": 7, "block": 5000, "weights_set": "set at block 5000 for 2 uids", "paused": False,
        "weights": {"1": 0.6125, "2": 0.3875}, "hotkeys": {"1": "5Hot1xxxxxx", "2": "5Hot2xxxxxx", "3": "5Hot3xxxxxx"},
        "problems": [], "seconds": 3.0, "competitions": {"c00": {
            "n_samples": 40, "group_samples": 1, "n_groups": 40, "block": 5000, "error": None, "models": [
                _row("cand", None, block=None, age_blocks=None, win_rate=1.0, loss_per_token=2.1,
                     loss_per_token_std=0.05),
                _row("uid 1", 1, win_rate=0.5, chain_win_rate=1.0, abs_win_rate=0.75, advantage=0.004, weight=1.0,
                     pool=True, tokenizer="competition", tokenizer_reason="own tokenizer fails the round trip",
                     loss_per_token=2.5, loss_per_token_std=0.1),
                _row("uid 2", 2, win_rate=0.0, chain_win_rate=0.0, abs_win_rate=0.25, advantage=0.003, weight=0.0,
                     pool=True, tokenizer="model", loss_per_token=2.7, loss_per_token_std=0.1),
                _row("uid 3", 3, status="failed", reason="network: 5Hot3: read timed out (retry at the next update)"),
                _row("uid 4", 4, status="skipped", reason="download time budget of this step used up")]}}}


def table_cells(step: dict) -> dict[str, dict[str, str]]:
    header = [c for c, _ in L.GLOSSARY]
    table = L.competition_table("c00", step["competitions"]["c00"], step["weights"])
    lines = [line for line in text_of(table, width=400).splitlines() if line.startswith("│")]
    return {cells[1]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.split("│")[1:-1]] for line in lines)}


def test_table_shows_the_chain_win_rate_and_the_candidates_apart():
    t = table_cells(STEP)
    assert t["uid 1"]["win rate"] == "1.000" and t["uid 1"]["bench win rate"] == ""  # not its 0.500 over all
    assert t["uid 1"]["abs win"] == "0.750" and t["uid 1"]["adv %"] == "0.400"
    assert t["cand"]["win rate"] == "n/a" and t["cand"]["bench win rate"] == "1.000"
    assert t["cand"]["weight (step)"] == t["cand"]["weight (EMA, set)"] == "n/a" and t["cand"]["hotkey"] == "bench"
    assert [t[k]["#"] for k in ("cand", "uid 1", "uid 2", "uid 3", "uid 4")] == ["1", "2", "3", "-", "-"]
    # a step saved before chain_win_rate was recorded: its win_rate was the chain's
    old = {**STEP, "competitions": {"c00": {**STEP["competitions"]["c00"], "models": [
        {k: v for k, v in STEP["competitions"]["c00"]["models"][2].items() if k != "chain_win_rate"}
        | {"win_rate": 0.125}]}}}
    assert table_cells(old)["uid 2"]["win rate"] == "0.125"


def test_weight_columns_are_the_step_weight_and_the_ema_vector_of_the_weights_table():
    text = text_of(L.render(STEP))
    assert "weight" in text and "(step)" in text and "(EMA, set)" in text
    t = table_cells(STEP)
    assert (t["uid 1"]["weight (step)"], t["uid 1"]["weight (EMA, set)"]) == ("1.0000", "0.6125")
    assert (t["uid 2"]["weight (step)"], t["uid 2"]["weight (EMA, set)"]) == ("0.0000", "0.3875")
    # a model not evaluated this step still holds its share of the vector (0 when it has none)
    assert (t["uid 3"]["weight (step)"], t["uid 3"]["weight (EMA, set)"]) == ("-", "0.0000")
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    weights = {c[0]: c[2] for c in cells if len(c) == 3}  # the weights table: uid, hotkey, weight
    assert weights == {"1": "0.6125", "2": "0.3875"}


def test_models_not_evaluated_show_their_state_and_reason_and_the_legend_explains_each_column():
    t = table_cells(STEP)
    assert t["uid 3"]["status"] == "failed: network: 5Hot3: read timed out (retry at the next update)"
    assert t["uid 4"]["status"] == "skipped: download time budget of this step used up"
    assert t["uid 1"]["status"] == "scored (tokenizer: own tokenizer fails the round trip)"
    assert t["uid 1"]["tokenizer"] == "competition" and t["uid 1"]["pool"] == "yes"
    assert t["uid 3"]["win rate"] == "-" and t["uid 3"]["loss/token"] == "-"
    legend = text_of(L.legend())
    for col, meaning in L.GLOSSARY:
        assert any(line.startswith(col + " ") and meaning.split()[0] in line for line in legend.splitlines()), col
    text = text_of(L.render(STEP))
    assert text.index("weight (EMA, set)  the model's share") > text.index("competition c00: 40 samples")


def test_header_names_the_version_and_a_paused_subnet():
    import importlib.metadata

    head = text_of(L.render({**STEP, "paused": True})).splitlines()[0]
    assert f"coldint-validator {importlib.metadata.version('coldint-validator')}" in head
    assert "step 7 at block 5000" in head and "subnet paused" in head
    assert "paused" not in text_of(L.render(STEP)).splitlines()[0]
