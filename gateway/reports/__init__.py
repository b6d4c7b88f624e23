"""The documents Cardinal writes about itself: docs/accuracy.md (the planner against measured
figures) and docs/seeds.md (the seed blog posts' claims checked). Generators only; they read the
planner and are read by the CLI."""
