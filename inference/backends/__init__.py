"""The backends behind the port besides the engine itself, and the port served over HTTP.

`recording.py` records every call of any backend and replays a run from the record; `fake.py` is a
scripted LLM for tests; `http.py` is an OpenAI-compatible client (vLLM, llama.cpp's server, another
`simulacra serve`); `pool.py` routes calls over several such servers (sticky keys, failover);
`server.py` serves any `LLM` as an OpenAI-compatible API (`simulacra serve`).
Each implements `simulacra.inference.port.LLM`; nothing here knows of residents.
"""
