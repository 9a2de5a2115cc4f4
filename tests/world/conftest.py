from __future__ import annotations

import pytest

from simulacra.scenario import Scenario, generate_scenario, load_scenario, packaged_scenarios, parse_scenario


@pytest.fixture(scope="session")
def town3() -> Scenario:
    return load_scenario(packaged_scenarios()["town3"])


@pytest.fixture(scope="session")
def town25() -> Scenario:
    return load_scenario(packaged_scenarios()["town25"])


@pytest.fixture(scope="session")
def town100() -> Scenario:
    return parse_scenario(generate_scenario(100, seed=4), source="generated-100")
