"""A resolved preset written back as TOML (`bench run --dump-config`): the file that
`bench run --config` reads to the same preset."""

from __future__ import annotations

import json

from flowarena.harness.run.config import Preset


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {v!r}")


def toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def to_toml(preset: Preset) -> str:
    """The fully resolved preset as TOML that `bench run --config` reads back to the same preset.
    An unset optional field is written "none" (TOML has no null)."""
    data = preset.to_data()
    tables = {k: data.pop(k) for k in ("train", "eval", "method_overrides")}
    lines = ["# the resolved preset: bench run --config FILE runs exactly this"]
    lines += [f"{k} = {toml_value('none' if v is None else v)}" for k, v in data.items()]
    for key in ("train", "eval"):
        lines += ["", f"[{key}]"]
        lines += [f"{k} = {toml_value('none' if v is None else v)}" for k, v in tables[key].items()]
    lines += ["", "# per-method settings: the toy calibration, or a real recipe's exceptions"]
    for method, settings in tables["method_overrides"].items():
        lines += [f"[method_overrides.{toml_key(method)}]"] + [f"{k} = {toml_value(v)}"
                                                             for k, v in settings.items()]
    return "\n".join(lines) + "\n"
