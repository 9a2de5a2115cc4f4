"""simulacra.agents: the resident's mind (memory, retrieval, reflection, planning, reactions, dialogue).

Minds reach the language model only through ``simulacra.inference.port.LLM`` (one async
``generate`` with a pydantic schema); see docs/AGENTS.md.
"""

from .conversation import Conversation, Conversations
from .facts import FactTracker, Provenance, TownEvent, TrackedFact
from .memory import Memory, MemoryRecord, MemoryStore, MemoryStream, Retrieved
from .mind import Citizen, attach_minds, begin_step, interview_all, resident_places
from .retrieval import RetrievalWeights
from .society import MindConfig, Society

__all__ = [
    "Citizen",
    "Conversation",
    "Conversations",
    "FactTracker",
    "Memory",
    "MemoryRecord",
    "MemoryStore",
    "MemoryStream",
    "MindConfig",
    "Provenance",
    "Retrieved",
    "RetrievalWeights",
    "Society",
    "TownEvent",
    "TrackedFact",
    "attach_minds",
    "begin_step",
    "interview_all",
    "resident_places",
]
