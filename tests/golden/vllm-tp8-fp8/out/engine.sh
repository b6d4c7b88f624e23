#!/bin/sh
# DeepSeek-R1 fp8 on 8 x h200: one replica of 2 (vllm).
# Written by `cardinal render`; start it once per replica, each on its own PORT.
exec vllm serve \
    deepseek-ai/DeepSeek-R1 \
    --served-model-name deepseek-r1 \
    --host 0.0.0.0 \
    --port "${PORT:-8000}" \
    --tensor-parallel-size 8 \
    --max-num-seqs 256 \
    --max-model-len 163840 \
    --gpu-memory-utilization 0.9 \
    --kv-cache-dtype fp8 \
    --quantization fp8 \
    --reasoning-parser deepseek_r1
