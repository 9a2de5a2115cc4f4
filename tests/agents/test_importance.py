"""Importance: one call per distinct text, shared by concurrent askers, blended with the embedding prior."""

import asyncio

import pytest

from simulacra.agents import MindConfig, Society
from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.inference.embedding import load_embedder

pytestmark = pytest.mark.slow  # every test loads the packaged MiniLM embedder


def society(weight: float, answer: int = 2, latency: float = 0.0) -> tuple[Society, ScriptedLLM]:
    llm = ScriptedLLM(lambda p, s, k: {"score": answer}, latency=latency)
    soc = Society(
        llm, load_embedder(), residents=["Ada"], town_text="", config=MindConfig(importance_prior_weight=weight)
    )
    return soc, llm


async def test_a_text_is_scored_once_even_when_asked_concurrently() -> None:
    soc, llm = society(0.0, latency=0.02)
    got = await asyncio.gather(*(soc.importance("the stove is on") for _ in range(5)))
    assert got == [2] * 5 and len(llm.calls) == 1
    assert await soc.importance("the stove is on") == 2 and len(llm.calls) == 1


async def test_the_prior_ranks_news_above_routine_when_the_model_says_two_to_everything() -> None:
    soc, _ = society(2 / 3, answer=2)
    news = await soc.importance("I have decided to stand for the empty council seat.")
    party = await soc.importance("I am hosting a lantern party on Friday and want to invite everyone.")
    routine = await soc.importance("the bed at Lindqvist House is in use")
    walk = await soc.importance("Emeka Abara is walking to Fernwick Library")
    assert min(news, party) > max(routine, walk)
    assert all(1 <= x <= 10 for x in (news, party, routine, walk))


async def test_weight_zero_is_the_models_score() -> None:
    soc, _ = society(0.0, answer=9)
    assert await soc.importance("the bed is in use") == 9
