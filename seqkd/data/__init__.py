"""Data: strict file readers and writers (:mod:`.files`), the dataset registry (:mod:`.registry`), the synthetic
task (:mod:`.synthetic`), the prompt format (:mod:`.prompts`) and batching (:mod:`.batching`)."""
