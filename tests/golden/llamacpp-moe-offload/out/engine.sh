#!/bin/sh
# DeepSeek-V3.1 q8_0 on 1 x l4: one replica of 2 (llama.cpp).
# Written by `cardinal render`; start it once per replica, each on its own PORT.
exec llama-server \
    -hf unsloth/DeepSeek-V3.1-GGUF:Q8_0 \
    --alias deepseek-v3.1 \
    --host 0.0.0.0 \
    --port "${PORT:-8000}" \
    -ngl 62 \
    -c 2048 \
    -np 2 \
    --n-cpu-moe 61 \
    --metrics
