"""The gateway: an OpenAI-compatible load balancer over vLLM, llama.cpp and simulated cards.

It imports neither the planner nor the simulated card: it knows only its own config and the HTTP
backends it is given.
"""
