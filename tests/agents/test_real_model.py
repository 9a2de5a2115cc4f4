"""town3 for two simulated hours on the real packaged model (SmolLM2-135M) and the real embedder."""

import asyncio

import pytest

from simulacra.inference.backends.recording import CallRecord, RecordingLLM
from simulacra.inference.engine import Engine
from simulacra.inference.port import parse_output
from simulacra.scenario import load_scenario
from simulacra.simulation import Simulation

STEPS = 12  # 2 hours of 10-minute steps


@pytest.fixture(scope="module")
def town3_run():
    records: list[CallRecord] = []
    walked: list[tuple[str, str, str]] = []  # (resident, action place, where they ended up when not walking)

    async def main():
        engine = Engine()
        try:
            sim = Simulation(load_scenario("scenarios/town3.yaml"), RecordingLLM(engine, records.append), seed=3)
            events = []
            for _ in range(STEPS):
                await sim.astep()
                events += sim.society.take_events()
                for r in sim.residents:
                    if r.current is not None and sim.society.conversations.of(r.name) is None:
                        walked.append((r.name, r.current.place, "" if r.is_moving else r.place))
            return sim, events
        finally:
            await engine.aclose()

    sim, events = asyncio.run(main())
    return sim, events, records, walked


@pytest.mark.slow
def test_every_output_is_valid_for_its_schema(town3_run) -> None:
    sim, _, records, _ = town3_run
    assert len(records) >= 20
    for rec in records:
        assert rec.error is None and rec.finish_reason == "stop", rec.meta
        assert parse_output(rec.json_schema, rec.text) == rec.parsed
    assert all(s["invalid"] == 0 for s in sim.society.call_stats().values())


@pytest.mark.slow
def test_residents_go_where_their_actions_are(town3_run) -> None:
    sim, _, _, walked = town3_run
    arrived = [(who, want, at) for who, want, at in walked if at]
    assert arrived
    for who, want, at in arrived:
        assert at == want or at.startswith(want + ":") or want.startswith(at + ":"), (who, want, at)
    places = {want for _, want, _ in walked}
    assert len(places) >= 2  # they go somewhere, not only home
    for r in sim.residents:
        if r.current is not None and sim.society.conversations.of(r.name) is None:
            assert r.destination == r.current.place


@pytest.mark.slow
def test_a_conversation_happens_and_is_remembered(town3_run) -> None:
    sim, events, _, _ = town3_run
    convs = sim.society.conversations.history
    assert convs and len(convs[0].turns) >= 2
    assert any(e["kind"] == "utterance" for e in events)
    for conv in convs:
        if conv.ended:
            assert sim.town.social.relation(conv.a, conv.b)["interactions"] >= 1
            for name in (conv.a, conv.b):
                memories = [m.text for m in sim.resident(name).stream.memories if m.kind == "conversation"]
                assert any(conv.other(name) in text for text in memories)
