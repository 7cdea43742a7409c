"""The same SFT training step as `rlhf bench sft`, in PyTorch, for a ratio.

    pip install torch transformers
    python benches/hf_sft_step.py [--threads 2] [--lora 16] [--preset 0.5b --device cuda --precision bf16]

4-layer d=256 LLaMA (vocab 8192, SwiGLU 688), batch 8 × seq 256, cross-entropy on every token,
forward + backward + AdamW step; prints tokens/s (best of 5 after two warm-up steps).
"""
import argparse
import time

import torch
import transformers

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--device", default="cpu")
p.add_argument("--lora", type=int, default=None, help="LoRA rank (alpha = 2 rank, every projection), with peft")
p.add_argument("--preset", choices=["0.5b", "1.5b", "7b"], default=None,
               help="a real model's shape (Qwen2.5, random weights), as `rlhf bench --preset`")
p.add_argument("--precision", choices=["f32", "bf16"], default="f32", help="bf16: torch autocast")
p.add_argument("--gradient-checkpointing", action="store_true", help="model.gradient_checkpointing_enable()")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
PRESETS = {"0.5b": (896, 4864, 24, 14, 2, True), "1.5b": (1536, 8960, 28, 12, 2, True), "7b": (3584, 18944, 28, 28, 4, False)}
if a.preset:
    h, f, n, heads, kv, tie = PRESETS[a.preset]
    cfg = transformers.Qwen2Config(
        vocab_size=151936, hidden_size=h, intermediate_size=f, num_hidden_layers=n, num_attention_heads=heads,
        num_key_value_heads=kv, max_position_embeddings=max(a.seq, 256), rope_theta=1e6, tie_word_embeddings=tie,
    )
    model = transformers.Qwen2ForCausalLM(cfg).to(a.device).train()
else:
    cfg = transformers.LlamaConfig(
        vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg).to(a.device).train()
if a.gradient_checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
if a.lora:
    import peft

    model = peft.get_peft_model(model, peft.LoraConfig(r=a.lora, lora_alpha=2 * a.lora, target_modules="all-linear"))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.tensor([[(b * 7919 + i * 104729) % (cfg.vocab_size - 1) + 1 for i in range(a.seq)] for b in range(a.batch)], device=a.device)
best = float("inf")
for step in range(7):
    t = time.perf_counter()
    with torch.autocast(device_type=a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.precision == "bf16"):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    if a.device != "cpu":
        torch.cuda.synchronize()
    s = time.perf_counter() - t
    if step >= 2:
        best = min(best, s)
        print(f"step {step - 1}: {s:.3f}s")
print(f"pytorch sft train tokens/s (best of 5): {a.batch * a.seq / best:.0f}")
if a.device != "cpu":
    print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")
