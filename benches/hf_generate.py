"""The same generation benchmark as `rlhf bench generate`, in PyTorch + transformers, for a ratio.

    pip install torch transformers
    python benches/hf_generate.py [--threads 2] [--preset 0.5b --batch 64 --new-tokens 256 --device cuda --precision bf16]

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
p.add_argument("--preset", choices=["0.5b", "1.5b", "7b"], default=None,
               help="a real model's shape (Qwen2.5, random weights), as `rlhf bench --preset`")
p.add_argument("--precision", choices=["f32", "bf16"], default="f32", help="bf16: torch autocast")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
PRESETS = {"0.5b": (896, 4864, 24, 14, 2, True), "1.5b": (1536, 8960, 28, 12, 2, True), "7b": (3584, 18944, 28, 28, 4, False)}
if a.preset:
    h, f, n, heads, kv, tie = PRESETS[a.preset]
    cfg = transformers.Qwen2Config(
        vocab_size=151936, hidden_size=h, intermediate_size=f, num_hidden_layers=n, num_attention_heads=heads,
        num_key_value_heads=kv, max_position_embeddings=max(16 + a.new_tokens, 256), rope_theta=1e6,
        tie_word_embeddings=tie, pad_token_id=0, eos_token_id=None, bos_token_id=None,
    )
    model = transformers.Qwen2ForCausalLM(cfg).eval().to(a.device)
else:
    cfg = transformers.LlamaConfig(
        vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, pad_token_id=0, eos_token_id=None, bos_token_id=None,
    )
    model = transformers.LlamaForCausalLM(cfg).eval().to(a.device)
if a.precision == "bf16":
    model = model.to(torch.bfloat16)
prompts = [[(b * 7919 + i * 104729) % (cfg.vocab_size - 1) + 1 for i in range(16 - min(b % 4, 15))] for b in range(a.batch)]
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
if a.device != "cpu":
    print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")
