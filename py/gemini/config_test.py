"""Config presets, validation and --config.* flag overrides."""

import pytest
from absl import flags

from gemini import config, config_flags


def test_presets_construct_and_validate():
  for name in config.PRESETS:
    cfg = config.get_config(name)
    assert cfg.name == name
  assert config.get_config("nano1").n_kv_heads == 1  # MQA, the 1.0 choice


def test_unknown_preset_lists_known_ones():
  with pytest.raises(ValueError, match="nano_tiny"):
    config.get_config("nano3")


def test_invalid_shapes_are_refused():
  with pytest.raises(ValueError, match="n_kv_heads"):
    config.get_config("nano_tiny").replace(n_heads=5, n_kv_heads=2)


def test_overrides_parse_by_field_type():
  cfg = config_flags.resolve("pro_tiny", {"d_model": "384", "moe.top_k": "1",
                                          "tie_embeddings": "false", "moe.layers": "0,2",
                                          "vision.tokens_per_frame": "258", "rope_base": "1e5"})
  assert cfg.d_model == 384 and cfg.moe.top_k == 1 and cfg.tie_embeddings is False
  assert cfg.moe.layers == (0, 2) and cfg.vision.tokens_per_frame == 258
  assert cfg.rope_base == 100000.0
  assert config.get_config("pro_tiny").d_model == 256  # presets are not mutated


@pytest.mark.parametrize("key,value,message", [
    ("d_modle", "3", "no field 'd_modle'"),
    ("d_model", "wide", "expected int"),
    ("moe.top_k", "9", "moe.top_k=9"),
    ("moe", "3", "nested config"),
    ("tie_embeddings", "maybe", "expected bool"),
    ("d_model.x", "1", "not a nested config"),
])
def test_bad_overrides_name_the_flag(key, value, message):
  with pytest.raises(ValueError, match=message):
    config_flags.resolve("pro_tiny", {key: value})


def test_flags_parser_strips_config_fields():
  fv = flags.FlagValues()
  flags.DEFINE_string("config", "nano_tiny", "", flag_values=fv)
  rest, found = config_flags.split_overrides(
      ["prog", "--config=pro_tiny", "--config.d_model=128", "--config.moe.top_k", "1"])
  assert found == {"d_model": "128", "moe.top_k": "1"}
  fv(rest)
  assert fv.config == "pro_tiny"
  assert config_flags.resolve(fv.config, found).d_model == 128


def test_nested_override_errors_name_the_whole_flag():
  with pytest.raises(ValueError, match=r"--config\.moe\.top_k='x': expected int"):
    config_flags.resolve("pro_tiny", {"moe.top_k": "x"})
  with pytest.raises(ValueError, match=r"--config\.vision\.nope: VisionConfig has no field"):
    config_flags.resolve("pro_tiny", {"vision.nope": "1"})


def test_flags_parser_hands_overrides_to_main_in_argv():
  argv = config_flags.flags_parser(["prog", "--config.d_model=128", "--config.moe.top_k", "1"])
  assert config_flags.overrides(argv) == {"d_model": "128", "moe.top_k": "1"}


def test_config_json_round_trip_and_type_checks():
  cfg = config_flags.resolve("pro_tiny", {"moe.layers": "1,3"})
  d = config_flags.config_to_dict(cfg)
  assert config_flags.config_from_dict(d) == cfg
  with pytest.raises(ValueError, match=r"config\.moe\.top_k='2': expected int"):
    config_flags.config_from_dict(dict(d, moe=dict(d["moe"], top_k="2")))
  with pytest.raises(ValueError, match=r"config\.wings: ModelConfig has no field"):
    config_flags.config_from_dict(dict(d, wings=2))


def test_parse_mesh_names_the_bad_part():
  assert config_flags.parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4}
  assert config_flags.parse_mesh("") == {}
  for bad in ("data=0", "pipeline=2", "data=2,data=2", "fsdp"):
    with pytest.raises(ValueError, match="--mesh="):
      config_flags.parse_mesh(bad)
