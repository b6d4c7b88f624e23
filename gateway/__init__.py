"""Cardinal: how many GPU cards of which kind serve a model at a target QPS within its SLOs, and
the proof before launch. The loop reads left to right, and so do the imports:

    plan -> render -> serve -> prove -> watch, and calibrate feeds measurements back to plan

Code map (one package per stage):

- `planner/`   pure data and functions: catalog (`data/*.yaml`), weights, KV cache, fit, speed
               (roofline `speed.py`, kernel tables `profiled.py`), capacity, plan, search,
               accuracy against measured figures. Imports nothing else of Cardinal.
- `planfile`   the plan file (`fleet.yaml`), contract 1: written by `cardinal plan -o`,
               validated on load, read by every later stage.
- `render/`    a plan as deployable files: engine command lines, Compose, Kubernetes, nginx,
               the gateway's `gateway.yaml` (contract 2), Prometheus and Grafana.
- `server/`    the aiohttp OpenAI-compatible gateway (contract 3: the OpenAI HTTP API to clients
               and backends; contract 4: `gateway_*` Prometheus series). Knows only its config
               and the HTTP backends it is given: it imports neither the planner nor the sim.
- `sim/`       the simulated card: a real aiohttp server speaking vLLM's API and metric names,
               its steps timed by the planner's speed model.
- `prove/`     `cardinal prove fleet.yaml`: starts the cards and the gateway (`fleet.py`), runs
               `loadtest/qps.py` under Locust in its own process (`trial.py`), judges the verdict
               (`proof.py`, `binding.py`, `report.py`).
- `calibrate/` measurements back into the plan: probe a real card, compare, refit the step model
               (`fit.py`, `silicon.py`).
- `reports/`   the documents Cardinal writes about itself: docs/accuracy.md, docs/seeds.md.
- `cli/`       `cardinal`, the only part that reads argv, files and the environment
               (a package: `main`, shared argument types, one module per command).

`loadtest/` (beside this package) is plain Locust and imports nothing from here.
"""
