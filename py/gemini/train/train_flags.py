"""`TrainConfig` fields as absl flags, declared once from the dataclass.

    TRAIN = train_flags.define(batch_size=4)          # --steps, --batch_size, ... --lr
    tc = train_flags.train_config(TRAIN, steps=300)    # TrainConfig from the parsed flags

Each field becomes `--<field>` with the field's type, default (or the caller's default)
and the help text in its metadata; `mixture_stages` is read with `parse_mixture_stages`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict

from absl import flags

from gemini.train.train_config import TrainConfig, parse_mixture_stages

_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
           bool: flags.DEFINE_bool}


def define(flag_values: flags.FlagValues = flags.FLAGS, **defaults: Any) -> Dict[str, Any]:
  """Defines one flag per TrainConfig field; `defaults` replace the dataclass defaults.
  Returns {field: FlagHolder} for `train_config`."""
  hints = typing.get_type_hints(TrainConfig)
  unknown = set(defaults) - {f.name for f in dataclasses.fields(TrainConfig)}
  if unknown:
    raise ValueError(f"train_flags.define: TrainConfig has no fields {sorted(unknown)}")
  holders = {}
  for f in dataclasses.fields(TrainConfig):
    default = defaults.get(f.name, f.default)
    help_text = f.metadata.get("help", f.name)
    if f.name == "mixture_stages":
      holders[f.name] = flags.DEFINE_string(f.name, default or "", help_text,
                                            flag_values=flag_values)
    else:
      holders[f.name] = _DEFINE[hints[f.name]](f.name, default, help_text,
                                               flag_values=flag_values)
  return holders


def train_config(holders: Dict[str, Any], **replace: Any) -> TrainConfig:
  """TrainConfig from the parsed flags; `replace` sets fields the caller computes."""
  kw = {name: h.value for name, h in holders.items()}
  kw["mixture_stages"] = parse_mixture_stages(kw["mixture_stages"] or "")
  kw.update(replace)
  return TrainConfig(**kw)
