from tests.gguf.tiny_gguf import tiny_gguf, tiny_llama_and_tokenizer  # noqa: F401  (fixtures)
