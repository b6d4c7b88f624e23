"""Proof runs: the plan's cards and gateway under the Locust scenario, with a verdict."""
