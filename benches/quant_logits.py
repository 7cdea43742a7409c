"""How far `--quant` moves a real model's logits: `rlhf model logits` in f32 and with each kind on the
same held-out batch, compared here.

    python benches/quant_logits.py --model models/smollm2 [--rlhf target/release/rlhf] [--rows 8 --len 96]

The batch is ColossalChat's SFT test files (../shared/data/colossalchat) as one token stream, cut into
rows of --len tokens (needs `transformers` for the tokenizer, `numpy` and `safetensors`). Prints, per
kind: max and mean |Δlogit|, the share of positions whose top token is unchanged, the mean
KL(f32 ‖ quantized) per token, and the top-token agreement where the f32 top-two margin exceeds twice
that position's largest change.
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file
from transformers import AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--rlhf", default="target/release/rlhf")
p.add_argument("--data", default="../shared/data/colossalchat")
p.add_argument("--rows", type=int, default=8)
p.add_argument("--len", type=int, default=96)
a = p.parse_args()

tok = AutoTokenizer.from_pretrained(a.model)
stream = []
for name in ["test_sft_data.jsonl", "lora_sft_data.jsonl"]:
    for line in open(os.path.join(a.data, name)):
        r = json.loads(line)
        msgs = r if isinstance(r, list) else (r.get("messages") or [])
        stream += tok("\n".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict)))["input_ids"]
ids = np.array([stream[i * a.len:(i + 1) * a.len] for i in range(a.rows)], dtype=np.int64)

tmp = tempfile.mkdtemp()
save_file({"input_ids": ids, "attention_mask": np.ones_like(ids)}, f"{tmp}/in.safetensors")
logits = {}
for kind in ["f32", "q8", "q4", "nf4"]:
    out = f"{tmp}/{kind}.safetensors"
    quant = [] if kind == "f32" else ["--quant", kind]
    subprocess.run([a.rlhf, "model", "logits", "--model", a.model, "--input", f"{tmp}/in.safetensors", "--output", out, *quant], check=True)
    logits[kind] = load_file(out)["logits"].astype(np.float64)


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


ref = logits["f32"]
lp = log_softmax(ref)
top2 = np.sort(ref, -1)[..., -2:]
print(f"{ids.size} positions; f32 logits from {ref.min():.1f} to {ref.max():.1f}")
for kind in ["q8", "q4", "nf4"]:
    q = logits[kind]
    d = np.abs(q - ref)
    kl = (np.exp(lp) * (lp - log_softmax(q))).sum(-1)
    same = ref.argmax(-1) == q.argmax(-1)
    decided = (top2[..., 1] - top2[..., 0]) > 2 * d.max(-1)
    sure = f"{100 * same[decided].mean():.1f}% of {decided.sum()}" if decided.any() else f"none of 0"
    print(f"{kind}: max |Δlogit| {d.max():.3f}, mean {d.mean():.4f}; top token unchanged at {100 * same.mean():.1f}%; "
          f"mean KL {kl.mean():.4f} nats/token; where the margin allows: {sure}")
