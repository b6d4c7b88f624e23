"""Hosted-API prices from litellm's bundled price map, read offline.

litellm fetches its map over the network on import unless told otherwise; Cardinal never imports it
for this: it only locates the package and reads the JSON copy that ships inside it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

MAP_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True, kw_only=True)
class ApiPrice:
    key: str
    input_usd_per_token: float
    output_usd_per_token: float
    source: str

    def monthly_usd(
        self, *, qps: float, prompt_tokens: int, output_tokens: int, hours: float
    ) -> float:
        requests = qps * hours * 3600
        return requests * (
            prompt_tokens * self.input_usd_per_token + output_tokens * self.output_usd_per_token
        )


@functools.cache
def _price_map() -> dict[str, dict]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    path = Path(spec.origin).parent / MAP_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def api_price(key: str) -> ApiPrice | None:
    """Price of a hosted model (litellm key, e.g. `deepseek/deepseek-chat`), or None if unknown."""
    entry = _price_map().get(key)
    if not entry or entry.get("input_cost_per_token") is None:
        return None
    return ApiPrice(
        key=key,
        input_usd_per_token=float(entry["input_cost_per_token"]),
        output_usd_per_token=float(entry["output_cost_per_token"]),
        source=f"litellm {version('litellm')} bundled price map (cache-miss input price)",
    )
