#!/bin/sh
# DeepSeek-R1-Distill-Qwen-32B awq on 1 x a100-80gb-sxm: one replica of 2 (vllm).
# Written by `cardinal render`; start it once per replica, each on its own PORT.
exec vllm serve \
    casperhansen/deepseek-r1-distill-qwen-32b-awq \
    --served-model-name deepseek-r1-distill-qwen-32b \
    --host 0.0.0.0 \
    --port "${PORT:-8000}" \
    --tensor-parallel-size 1 \
    --max-num-seqs 43 \
    --max-model-len 131072 \
    --gpu-memory-utilization 0.9 \
    --reasoning-parser deepseek_r1
