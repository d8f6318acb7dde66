"""The teacher stage: decoding (:mod:`.decoding`), engines (:mod:`.engines`: hf, vllm), distillation corpora
(:mod:`.corpus`) and the selection of training data from them (:mod:`.selection`)."""
