"""Models: presets and building (:mod:`.presets`), loading / saving / GGUF conversion (:mod:`.loading`), tokenizers
(:mod:`.tokenizer`) and student initialisation from a teacher (:mod:`.student_init`)."""

from seqkd.models.loading import convert_gguf, load_model, save_model, smollm2_gguf_path
from seqkd.models.presets import PRESETS, build_model, count_non_embedding, count_parameters, describe, family

__all__ = ["PRESETS", "build_model", "convert_gguf", "count_non_embedding", "count_parameters", "describe", "family",
           "load_model", "save_model", "smollm2_gguf_path"]
