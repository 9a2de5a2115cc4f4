"""TownSource: history, deltas, details, extras, controls; and the message parser and rate limiter."""

from __future__ import annotations

import asyncio

import pytest

from simulacra.viewer.protocol import GetStep, Interview, ProtocolError, TokenBucket, parse_request
from simulacra.viewer.source import NoMindError, TownSource, ViewSource, run_town
from tests.viewer.conftest import apply_delta, town3, town25, world_part


async def test_history_and_deltas_match_the_town_at_every_step():
    town = town25()
    src = TownSource(town)
    assert isinstance(src, ViewSource)
    expected = {0: world_part(town.snapshot())}
    state = src.snapshot()
    for _ in range(40):
        await run_town(src, 1)
        expected[town.steps] = world_part(town.snapshot())
        state = apply_delta(state, src.delta(town.steps - 1))
        assert world_part(state) == expected[town.steps]
    for step, frame in expected.items():
        past = src.snapshot_at(step)
        assert world_part(past) == frame
        assert past["map"] == town.map.to_json()
    # a delta over several steps carries every change since then
    assert world_part(apply_delta(src.snapshot_at(10), src.delta(10))) == expected[40]
    with pytest.raises(KeyError, match="step 41 is not recorded; steps 0..40 are"):
        src.snapshot_at(41)


def test_details_from_the_scenario_and_social_graph():
    town = town3()
    d = TownSource(town).resident_details("Ada Quill")
    assert d["persona"] == {
        "age": 34,
        "occupation": "barista",
        "traits": ["curious", "warm"],
        "lifestyle": "Opens the café in the morning.",
    }
    assert d["relationships"] == [{"name": "Ben Quill", "strength": 0.9, "note": "my brother"}]
    assert d["memories"][0]["text"] == "I make the best flat white on Pell Street."
    assert any("work at Pell Café" in p for p in d["plan"])
    with pytest.raises(KeyError):
        TownSource(town).resident_details("Nobody")


async def test_interview_without_a_mind_says_so_and_with_one_answers():
    town = town3()
    with pytest.raises(NoMindError, match="no mind is attached"):
        await TownSource(town).interview("Ada Quill", "How are you?")

    async def mind(name: str, question: str) -> str:
        return f"{name} heard: {question}"

    src = TownSource(town, interview=mind)
    assert await src.interview("Ada Quill", "Hi?") == "Ada Quill heard: Hi?"
    with pytest.raises(KeyError):
        await src.interview("Nobody", "Hi?")


async def test_extras_speech_social_and_stats_reach_frames_and_deltas():
    town = town3()
    talk = {}

    def extras(_town):
        return {
            "speech": talk,
            "conversations": [{"id": 1, "participants": ["Ada Quill", "Cora Lind"], "turns": [], "ended": False}],
            "stats": {"tokens_per_s": 12.5},
        }

    src = TownSource(town, extras=extras)
    talk = {"Ada Quill": {"speech": "Morning!", "talking_to": "Cora Lind"}}
    town.social.record_interaction("Ada Quill", "Cora Lind", step=1)
    await run_town(src, 1)
    d = src.delta(0)
    ada = next(r for r in d["residents"] if r["name"] == "Ada Quill")
    assert ada["speech"] == "Morning!" and ada["talking_to"] == "Cora Lind"
    assert ["Ada Quill", "Cora Lind", 0.15] in d["social"]["edges"]
    assert d["stats"]["tokens_per_s"] == 12.5 and d["conversations"][0]["participants"] == ["Ada Quill", "Cora Lind"]
    talk = {}
    await run_town(src, 1)
    d = src.delta(1)
    ada = next(r for r in d["residents"] if r["name"] == "Ada Quill")
    assert "speech" not in ada and "social" not in d  # graph unchanged since step 1: not resent
    assert src.snapshot_at(1)["residents"][0]["speech"] == "Morning!"  # history is not rewritten


async def test_speech_stays_on_a_resident_who_keeps_moving():
    town = town25()
    walker = town.residents[0].name
    src = TownSource(town, extras=lambda _t: {"speech": {walker: {"speech": "Hello!", "talking_to": "x"}}})
    state = src.snapshot()
    for _ in range(30):
        await run_town(src, 1)
        state = apply_delta(state, src.delta(src.step - 1))
        me = next(r for r in state["residents"] if r["name"] == walker)
        assert me["speech"] == "Hello!"
        plain = [{k: v for k, v in r.items() if k not in ("speech", "talking_to")} for r in state["residents"]]
        assert world_part({**state, "residents": plain}) == world_part(town.snapshot())
    frames = (src.snapshot_at(0), src.snapshot())
    where = [(r["x"], r["y"]) for f in frames for r in f["residents"] if r["name"] == walker]
    assert where[0] != where[1]  # they did walk somewhere while talking


async def test_pause_resume_and_speed_drive_run_town():
    src = TownSource(town3())
    assert src.control("pause") == {"paused": True, "speed": 1.0}
    task = asyncio.create_task(run_town(src, 3))
    await asyncio.sleep(0.05)
    assert src.step == 0  # paused: nothing ran
    src.control("speed", 4.0)
    src.control("resume")
    assert await task == 3 and src.step == 3
    with pytest.raises(ValueError, match="speed needs a value between"):
        src.control("speed", 0)
    with pytest.raises(ValueError, match="unknown control command"):
        src.control("rewind")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_json"),
        (b"\x00\x01", "bad_message"),
        ("[1, 2]", "bad_message"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"step": 3}', "unknown_type"),
        ('{"type": "get_step", "step": -1}', "invalid"),
        ('{"type": "get_step", "step": "three"}', "invalid"),
        ('{"type": "get_step", "step": 1, "extra": true}', "invalid"),
        ('{"type": "details"}', "invalid"),
        ('{"type": "interview", "name": "Ada Quill", "question": "' + "x" * 501 + '"}', "invalid"),
        ('{"type": "control", "command": "explode"}', "invalid"),
        ('{"type": "control", "command": "speed", "value": NaN}', "invalid"),
        ('{"type": "live", "id": [1]}', "invalid"),
    ],
)
def test_bad_messages_are_protocol_errors(raw, code):
    with pytest.raises(ProtocolError) as e:
        parse_request(raw)
    assert e.value.code == code
    assert e.value.message


def test_good_messages_parse_and_keep_their_id():
    assert parse_request('{"type": "get_step", "step": 4, "id": "q1"}') == GetStep(type="get_step", step=4, id="q1")
    req = parse_request('{"type": "interview", "name": "Ada Quill", "question": "' + "x" * 500 + '", "id": 7}')
    assert isinstance(req, Interview) and req.id == 7
    with pytest.raises(ProtocolError) as e:
        parse_request('{"type": "get_step", "step": -1, "id": "q2"}')
    assert e.value.request_id == "q2"


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=5, clock=lambda: now[0])
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.1  # one token back
    assert bucket.take() and not bucket.take()
