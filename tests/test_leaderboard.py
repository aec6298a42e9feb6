"""The console leaderboard: the consensus table in a step's rendering."""
import io

from rich.console import Console

from validator import leaderboard as L

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


def text_of(renderable) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(renderable)
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


def test_step_to_report_carries_consensus():
    step = {"step": 2, "block": 4321, "competitions": {}, "consensus": CONSENSUS}
    assert L.step_to_report(step)["consensus"] is CONSENSUS
    assert "consensus" not in L.step_to_report({"step": 2, "block": 1, "competitions": {}})
