"""The same SFT training step as `rlhf bench sft`, in PyTorch, for a ratio.

    pip install torch transformers
    python benches/hf_sft_step.py [--threads 2] [--lora 16]

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
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = transformers.LlamaConfig(
    vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False,
)
model = transformers.LlamaForCausalLM(cfg).to(a.device).train()
if a.lora:
    import peft

    model = peft.get_peft_model(model, peft.LoraConfig(r=a.lora, lora_alpha=2 * a.lora, target_modules="all-linear"))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.tensor([[(b * 7919 + i * 104729) % 8191 + 1 for i in range(a.seq)] for b in range(a.batch)], device=a.device)
best = float("inf")
for step in range(7):
    t = time.perf_counter()
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
