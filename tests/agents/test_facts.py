"""Information spreads only through what is said, with provenance."""

from datetime import datetime

from simulacra.agents.facts import FactTracker, TrackedFact

T = datetime(2025, 4, 10, 9, 0)


def tracker() -> FactTracker:
    t = FactTracker([TrackedFact("party", "Juno", "Juno hosts a lantern party", ("party", "lantern"))])
    t.seed(0, T)
    return t


def test_holder_knows_from_the_start_without_source() -> None:
    t = tracker()
    assert t.knows("Juno", "party") and t.known["party"]["Juno"].source is None
    assert t.counts() == {"party": 1}


def test_chain_of_provenance() -> None:
    t = tracker()
    assert t.hear("Juno", ["Ada"], "Come to my Lantern party on Friday!", 3, T)[0].source == "Juno"
    assert t.hear("Ada", ["Ben"], "Juno is throwing a party.", 5, T)[0].source == "Ada"
    assert t.known["party"]["Ben"].step == 5 and "party" in t.known["party"]["Ben"].words
    assert t.counts() == {"party": 3}


def test_no_keyword_no_spread_and_words_must_match_whole() -> None:
    t = tracker()
    assert t.hear("Juno", ["Ada"], "Lovely weather today.", 1, T) == []
    assert t.hear("Juno", ["Ada"], "The partygoers left.", 1, T) == []  # 'party' only as a whole word
    assert not t.knows("Ada", "party")


def test_mention_by_someone_who_does_not_know_is_unsourced() -> None:
    t = tracker()
    assert t.hear("Ben", ["Ada"], "Is there a party?", 2, T) == []
    assert not t.knows("Ada", "party")
    assert len(t.unsourced) == 1 and t.unsourced[0].source == "Ben"


def test_learning_twice_keeps_the_first_source_and_state_round_trips() -> None:
    t = tracker()
    t.hear("Juno", ["Ada"], "party!", 1, T)
    t.hear("Juno", ["Ada"], "party again!", 2, T)
    assert t.known["party"]["Ada"].step == 1
    u = tracker()
    u.load_state_dict(t.state_dict())
    assert u.state_dict() == t.state_dict()
