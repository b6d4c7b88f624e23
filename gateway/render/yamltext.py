"""YAML as people write it: block scalars for multi-line text, no anchors, keys in given order."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a shared dict is written out twice, never as &id001 / *id001


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    # short lists of scalars on one line: `ports: ['9090:9090']`, `- source: [a, b]`
    flat = all(isinstance(v, str | int | float) and "\n" not in str(v) for v in value)
    short = flat and sum(len(str(v)) + 2 for v in value) < 60
    return dumper.represent_sequence(
        "tag:yaml.org,2002:seq", value, flow_style=short and bool(value)
    )


_Dumper.add_representer(str, _str)
_Dumper.add_representer(list, _list)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def dump_all(documents: list[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
