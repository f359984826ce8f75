"""Command-line overrides of config fields: `--config=nano_tiny --config.d_model=384`.

Nested fields use dots (`--config.moe.num_experts=8`, `--config.vision.tokens_per_frame=258`).
Values are parsed by the field's declared type; an unknown field or an unparsable value
raises `ValueError` naming the flag, the field and the expected type.

Use with absl:

    from absl import app
    from gemini import config_flags
    CONFIG = config_flags.define_config_flag()       # defines --config
    def main(argv): cfg = config_flags.resolve(CONFIG.value, config_flags.overrides())
    app.run(main, flags_parser=config_flags.flags_parser)

`flags_parser` strips the `--config.*` arguments (absl would reject them as unknown
flags) before absl parses the rest; `overrides()` returns what it stripped.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, Dict, List, Sequence, Tuple

from absl import flags

from gemini import config as config_lib

_PREFIX = "--config."


def define_config_flag(default: str = "nano_tiny", name: str = "config") -> flags.FlagHolder:
  """Defines `--config=<preset>` with the preset names listed in its help."""
  return flags.DEFINE_string(
      name, default, f"Model preset, one of: {', '.join(config_lib.PRESETS)}. Override "
      f"single fields with --{name}.FIELD=VALUE (nested: --{name}.moe.top_k=1).")


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], Dict[str, str]]:
  """Separates `--config.a.b=v` arguments from the rest of argv."""
  rest, found = [], {}
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith(_PREFIX):
      body = arg[len(_PREFIX):]
      if "=" in body:
        key, value = body.split("=", 1)
      elif i + 1 < len(args):
        key, value = body, args[i + 1]
        i += 1
      else:
        raise ValueError(f"flag {arg} has no value")
      found[key] = value
    else:
      rest.append(arg)
    i += 1
  return rest, found


_LAST_OVERRIDES: Dict[str, str] = {}


def flags_parser(argv: Sequence[str]) -> List[str]:
  """An absl `flags_parser`: strips `--config.*`, then lets absl parse the rest."""
  rest, found = split_overrides(argv)
  _LAST_OVERRIDES.clear()
  _LAST_OVERRIDES.update(found)
  try:
    return flags.FLAGS(rest)
  except flags.Error as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
    sys.exit(1)


def overrides() -> Dict[str, str]:
  """The `--config.*` overrides seen by the last `flags_parser` call."""
  return dict(_LAST_OVERRIDES)


def resolve(preset: str, field_overrides: Dict[str, str] | None = None) -> config_lib.ModelConfig:
  """Preset `preset` with `field_overrides` ({"moe.top_k": "1"}) applied and validated."""
  cfg = config_lib.get_config(preset)
  for key, value in (field_overrides or {}).items():
    cfg = apply_override(cfg, key, value)
  return cfg


def apply_override(cfg: Any, dotted: str, value: str) -> Any:
  """Returns `cfg` with the (possibly nested) field `dotted` set from string `value`."""
  head, _, tail = dotted.partition(".")
  fields = {f.name: f for f in dataclasses.fields(cfg)}
  if head not in fields:
    raise ValueError(f"--config.{dotted}: {type(cfg).__name__} has no field {head!r}; "
                     f"fields are: {', '.join(fields)}")
  hints = typing.get_type_hints(type(cfg))
  current = getattr(cfg, head)
  if tail:
    if not dataclasses.is_dataclass(current):
      raise ValueError(f"--config.{dotted}: field {head!r} is not a nested config")
    return dataclasses.replace(cfg, **{head: apply_override(current, tail, value)})
  if dataclasses.is_dataclass(current):
    raise ValueError(f"--config.{dotted}: {head!r} is a nested config; set its fields, "
                     f"e.g. --config.{dotted}.{dataclasses.fields(current)[0].name}=...")
  return dataclasses.replace(cfg, **{head: _parse(value, hints[head], f"--config.{dotted}")})


def _parse(text: str, typ: Any, where: str) -> Any:
  try:
    if typ is bool:
      lowered = text.lower()
      if lowered in ("1", "true", "yes"):
        return True
      if lowered in ("0", "false", "no"):
        return False
      raise ValueError(text)
    if typ in (int, float, str):
      return typ(text)
    if typing.get_origin(typ) is tuple:
      (inner, *_) = typing.get_args(typ)
      return tuple(inner(p) for p in text.split(",") if p.strip())
  except ValueError:
    raise ValueError(f"{where}={text!r}: expected {getattr(typ, '__name__', typ)}") from None
  raise ValueError(f"{where}: unsupported field type {typ}")
