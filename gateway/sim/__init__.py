"""The simulated card: a vLLM-compatible OpenAI server whose engine is timed by the planner."""
