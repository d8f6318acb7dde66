"""seqkd: sequence-level knowledge distillation and speculative-decoding draft distillation."""

__version__ = "0.1.0"
