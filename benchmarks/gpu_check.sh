#!/bin/bash
# Issue 19's GPU checks as ONE prepared run for the `device` tool (a fresh H100/H200 with torch + triton, no
# internet, no tvm): the compiled-kernel tests, the qlinear benchmark (eager and CUDA-graph times, then the
# sweep), greedy SmolLM2 identity on `cuda` (when the GGUF was carried), and the 1.5B decode vs torch.compile.
#
#     run(command="bash benchmarks/gpu_check.sh", timeout_s=590)      # results under $OUT, logs printed
#
# SmolLM2's GGUF (98 MB) is over the tool's 64 MiB per call: split it (head -c 50000000 / tail -c +50000001),
# copy the first part to /root/part1 in one short call, carry the second as .gpu/part2 in this one, right
# after (the machine stays warm ~30 s). Without them the identity check is skipped. Budget: ~15 device-minutes
# per session, machine start included; torch.compile's warm-up of the two peers alone takes ~2-3 minutes.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SLIMGRAPH_CACHE_DIR=/tmp/sgcache TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || tail "$OUT/pip.log"
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps .whl/*.whl >> "$OUT/pip.log" 2>&1   # gguf wheel
G=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f /root/part1 ] && [ -f .gpu/part2 ]; then mkdir -p /tmp/smol && cat /root/part1 .gpu/part2 > $G; fi
el "tests on the GPU (compiled kernels)"
timeout 150 python3 -m pytest -q -p no:cacheprovider -n 12 tests/codegen/triton tests/test_decoder.py \
    tests/test_tree_verify_windowed.py -k "triton or cuda or Triton" > "$OUT/pytest.log" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -20
el "qlinear vs copy bandwidth and cuBLAS"
timeout 60 python3 benchmarks/bench_triton.py 2>&1 | tee "$OUT/bench_triton.log" | grep -v Warn
[ -f $G ] && { el "SmolLM2 identity"; timeout 120 python3 benchmarks/bench_cuda.py --skip-decode --gguf $G 2>&1 \
    | grep -v "it/s\]" | tee "$OUT/identity.log" | tail -12; }
el "decode vs torch.compile"
timeout 300 python3 benchmarks/bench_cuda.py --rounds 2 --new 64 2>&1 | grep -v "it/s\]" | tee "$OUT/bench_cuda.log" \
    | grep -v Warn | tail -14
el "sweep (what is left of the time)"
timeout $(( 580 - ($(date +%s) - T0) )) python3 benchmarks/bench_triton.py --sweep 2>&1 | tee "$OUT/sweep.log" \
    | grep -E "sweep|BEST|best"
el "done"
