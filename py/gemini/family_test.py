"""Family formulas against counts worked out by hand (see the comments) for three presets."""

from gemini import config, family


def test_nano_tiny_by_hand():
  cfg = config.get_config("nano_tiny")
  # embed 8192*256; per layer: attn 2*256*4*64 + 2*256*1*64 = 163,840, mlp 3*256*1024 =
  # 786,432, two norms 512 -> 950,784; x4 layers; final norm 256.
  assert family.total_params(cfg) == 8192 * 256 + 4 * 950_784 + 256 == 5_900_544
  assert family.active_params(cfg) == family.total_params(cfg)
  # decode @100: 2*(attn 655,360 + mlp 3,145,728 + unembed 2,097,152) + 4*L*H*Dh*100.
  assert family.decode_flops_per_token(cfg, 100) == 2 * 5_898_240 + 4 * 4 * 4 * 64 * 100
  assert family.train_flops_per_token(cfg, 200) == 3 * family.decode_flops_per_token(cfg, 100)
  assert family.kv_bytes_per_token(cfg) == 2 * 4 * 1 * 64 * 2


def test_nano1_is_1_8b_by_hand():
  cfg = config.get_config("nano1")
  # attn 2*2048*8*256 + 2*2048*256 = 9,437,184; mlp 3*2048*10240 = 62,914,560; norms 4096.
  per_layer = 9_437_184 + 62_914_560 + 4096
  assert family.total_params(cfg) == 256_000 * 2048 + 18 * per_layer + 2048 == 1_826_695_168
  assert family.kv_bytes_per_token(cfg) == 18_432
  # int4: matrices at 0.5 B + 2 B per 32-group; 37 norm vectors in f32.
  matrices = 1_826_695_168 - 37 * 2048
  assert family.int4_bytes(cfg) == matrices // 2 + -(-matrices // 32) * 2 + 4 * 37 * 2048


def test_pro_tiny_moe_active_params_by_hand():
  cfg = config.get_config("pro_tiny")
  # Every layer MoE, 8 experts of 3*256*512 = 393,216, router 256*8; GQA attn 196,608.
  per_layer = 196_608 + 2048 + 8 * 393_216 + 512
  decoder = 8192 * 256 + 4 * per_layer + 256
  assert family.decoder_params(cfg) == decoder == 15_476_992
  assert family.active_params(cfg) == decoder - 4 * 6 * 393_216 == 6_039_808
  assert family.total_params(cfg) > decoder  # + vision and audio encoders


def test_smollm2_preset_matches_published_135m():
  assert family.total_params(config.get_config("smollm2_135m")) == 134_515_008


def test_family_is_a_cost_ladder():
  rows = {r.name: r for r in family.family_rows([config.get_config(n) for n in config.FULL_SIZE])}
  for order in (["nano1", "nano2"], ["flash_lite", "flash", "pro", "ultra"]):
    costs = [rows[n].decode_gflops_per_token for n in order]
    assert costs == sorted(costs), (order, costs)
  assert rows["pro"].active_params < rows["pro"].total_params / 10  # sparse MoE
  assert rows["ultra"].active_params == family.decoder_params(config.get_config("ultra"))


def test_table_lists_every_preset():
  cfgs = [config.get_config(n) for n in config.PRESETS]
  table = family.format_table(family.family_rows(cfgs, 4096), 4096)
  for name in config.PRESETS:
    assert f" {name} |" in table
