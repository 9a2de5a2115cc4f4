"""The serving engine, shaped like nano-vllm: one job per file, in the order a step runs.

`Engine` (llm_engine.py) is the async façade over a worker thread whose `step()` is schedule → run →
postprocess: `scheduler.py` picks decodes, prefill chunks and admissions under a token budget over
`sequence.py`'s requests and `block_manager.py`'s paged KV blocks (with the prefix cache);
`runner.py` flattens the step and runs the model over `paged_kv.py`'s store (`paged_attention.py`
is the numba decode kernel); `sampling.py` and `structured.py` (grammar masks, the close-out on a
spent budget) turn logits into tokens.
"""

from simulacra.inference.engine.llm_engine import Engine, EngineConfig

__all__ = ["Engine", "EngineConfig"]
