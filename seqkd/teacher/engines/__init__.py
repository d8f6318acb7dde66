"""Teacher decoding engines: the protocol and shared pieces in :mod:`.base`, one module per engine (``hf``,
``vllm``), loaded by name through :func:`get_engine` (vLLM is imported only when asked for)."""

from seqkd.config import MODES, DecodeSettings
from seqkd.teacher.engines.base import (
    ENGINE_MODULES,
    Candidate,
    Engine,
    TextCodec,
    check_vocab,
    get_engine,
)

__all__ = ["ENGINE_MODULES", "MODES", "Candidate", "DecodeSettings", "Engine", "TextCodec", "check_vocab", "get_engine"]
