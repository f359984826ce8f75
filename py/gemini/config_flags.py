"""Command-line overrides of config fields: `--config=nano_tiny --config.d_model=384`.

Nested fields use dots (`--config.moe.num_experts=8`, `--config.vision.tokens_per_frame=258`).
Values are parsed by the field's declared type; an unknown field or an unparsable value
raises `ValueError` naming the flag, the field and the expected type.

Use with absl:

    from absl import app
    from gemini import config_flags
    CONFIG = config_flags.define_config_flag()       # defines --config
    def main(argv): cfg = config_flags.resolve(CONFIG.value, config_flags.overrides(argv))
    app.run(main, flags_parser=config_flags.flags_parser)

`flags_parser` keeps the `--config.*` arguments away from absl (which would reject them as
unknown flags) and hands them on at the end of the argv `main` receives; `overrides(argv)`
reads them from there. A config is also stored as JSON (`config_to_dict`/`config_from_dict`,
e.g. in checkpoints), read with the same type checks. `parse_mesh` reads `--mesh=data=2,fsdp=4`.
"""

from __future__ import annotations

import dataclasses
import json
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


def flags_parser(argv: Sequence[str]) -> List[str]:
  """An absl `flags_parser`: absl parses everything but `--config.*`; those follow the
  remaining positional arguments (as `--config.KEY=VALUE`) in the argv given to main."""
  rest, found = split_overrides(argv)
  try:
    remaining = flags.FLAGS(rest)
  except flags.Error as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
    sys.exit(1)
  return list(remaining) + [f"{_PREFIX}{k}={v}" for k, v in found.items()]


def overrides(argv: Sequence[str]) -> Dict[str, str]:
  """The `--config.*` overrides in `argv` (what `flags_parser` handed to main)."""
  return split_overrides(argv)[1]


def parse_mesh(text: str, axes: Sequence[str] = ("data", "fsdp", "tensor", "expert",
                                                 "context")) -> Dict[str, int]:
  """"data=2,fsdp=4" -> {"data": 2, "fsdp": 4} (order kept); {} for "". ValueError names
  the part that is not AXIS=N with AXIS one of `axes` and N >= 1, or an axis given twice."""
  out: Dict[str, int] = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, sep, value = part.partition("=")
    name = name.strip()
    if not sep or name not in axes or not value.strip().isdigit() or int(value) < 1:
      raise ValueError(f"--mesh={text!r}: part {part!r} is not AXIS=N with AXIS one of "
                       f"{', '.join(axes)} and N >= 1")
    if name in out:
      raise ValueError(f"--mesh={text!r}: axis {name!r} given twice")
    out[name] = int(value)
  return out


def resolve(preset: str, field_overrides: Dict[str, str] | None = None) -> config_lib.ModelConfig:
  """Preset `preset` with `field_overrides` ({"moe.top_k": "1"}) applied and validated."""
  cfg = config_lib.get_config(preset)
  for key, value in (field_overrides or {}).items():
    cfg = apply_override(cfg, key, value)
  return cfg


def apply_override(cfg: Any, dotted: str, value: str, _flag: str = "") -> Any:
  """Returns `cfg` with the (possibly nested) field `dotted` set from string `value`."""
  flag = _flag or f"{_PREFIX}{dotted}"   # The whole flag, for messages at any depth.
  head, _, tail = dotted.partition(".")
  fields = {f.name: f for f in dataclasses.fields(cfg)}
  if head not in fields:
    raise ValueError(f"{flag}: {type(cfg).__name__} has no field {head!r}; "
                     f"fields are: {', '.join(fields)}")
  hints = typing.get_type_hints(type(cfg))
  current = getattr(cfg, head)
  if tail:
    if not dataclasses.is_dataclass(current):
      raise ValueError(f"{flag}: field {head!r} is not a nested config")
    return _replace(cfg, flag, **{head: apply_override(current, tail, value, flag)})
  if dataclasses.is_dataclass(current):
    raise ValueError(f"{flag}: {head!r} is a nested config; set its fields, "
                     f"e.g. {flag}.{dataclasses.fields(current)[0].name}=...")
  return _replace(cfg, flag, **{head: _parse(value, hints[head], flag)})


def _replace(cfg: Any, flag: str, **kw) -> Any:
  try:
    return dataclasses.replace(cfg, **kw)
  except ValueError as e:
    if str(e).startswith("--"):
      raise
    raise ValueError(f"{flag}: {e}") from None


def config_to_dict(cfg: Any) -> Dict[str, Any]:
  """A (nested) config dataclass as a JSON-able dict (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(d: Dict[str, Any], cls: Any = config_lib.ModelConfig,
                     where: str = "config") -> Any:
  """`cls` from `config_to_dict` output: every value is type-checked against the field;
  unknown keys are an error (naming `where` and the key); absent keys keep their defaults."""
  if not isinstance(d, dict):
    raise ValueError(f"{where}: expected an object for {cls.__name__}, got {type(d).__name__}")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls)
  kw = {}
  for key, value in d.items():
    if key not in fields:
      raise ValueError(f"{where}.{key}: {cls.__name__} has no field {key!r}")
    typ = hints[key]
    if dataclasses.is_dataclass(typ):
      kw[key] = config_from_dict(value, typ, f"{where}.{key}")
    else:
      kw[key] = _from_json_value(value, typ, f"{where}.{key}")
  try:
    return cls(**kw)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None


def _from_json_value(value: Any, typ: Any, where: str) -> Any:
  ok = {bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str)}
  if typ in ok:
    if not ok[typ](value):
      raise ValueError(f"{where}={value!r}: expected {typ.__name__}")
    return typ(value)
  if typing.get_origin(typ) is tuple:
    (inner, *_) = typing.get_args(typ)
    if not isinstance(value, list):
      raise ValueError(f"{where}={value!r}: expected a list")
    return tuple(_from_json_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
  raise ValueError(f"{where}: unsupported field type {typ}")


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
