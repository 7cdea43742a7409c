"""The same generation benchmark as `rlhf bench generate`, in PyTorch + transformers, for a ratio.

    pip install torch transformers
    python benches/hf_generate.py [--threads 2]

4-layer d=256 LLaMA (vocab 8192, SwiGLU 688), batch 8, prompts of 13-16 tokens left-padded,
64 new tokens, greedy, KV cache; prints tokens/s (best of 3 after a warm-up).
"""
import argparse
import time

import torch
import transformers

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--new-tokens", type=int, default=64)
p.add_argument("--device", default="cpu")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = transformers.LlamaConfig(
    vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=256, pad_token_id=0, eos_token_id=None, bos_token_id=None,
)
model = transformers.LlamaForCausalLM(cfg).eval().to(a.device)
prompts = [[(b * 7919 + i * 104729) % 8191 + 1 for i in range(16 - min(b % 4, 15))] for b in range(a.batch)]
L = max(map(len, prompts))
ids = torch.tensor([[0] * (L - len(q)) + q for q in prompts], device=a.device)
mask = torch.tensor([[0] * (L - len(q)) + [1] * len(q) for q in prompts], device=a.device)
gen = transformers.GenerationConfig(do_sample=False, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                                    eos_token_id=None, pad_token_id=0)
best = float("inf")
for rep in range(4):
    if a.device != "cpu":
        torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, generation_config=gen)
    if a.device != "cpu":
        torch.cuda.synchronize()
    s = time.perf_counter() - t
    if rep:
        best = min(best, s)
    print(f"run {rep}: {s:.3f}s")
print(f"transformers generate tokens/s (best of 3): {a.batch * a.new_tokens / best:.0f}")
