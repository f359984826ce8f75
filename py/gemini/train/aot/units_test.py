"""Fast checks of the AOT harness's arithmetic (no compilation): HLO collective parsing,
counting every layer-scan iteration, the roofline, topology/mesh parsing and the planner's mesh rules."""

import dataclasses
import math
import types

import pytest

from gemini import config_flags, family
from gemini.config import get_config
from gemini.model import spec
from gemini.train.aot import analyze, collectives, compile_step, figures, hardware, planner, report

# Four collectives as the TPU compiler prints them (an async all-gather appears three times
# with one channel id; a combined all-reduce has a tuple result).
_HLO = """
  %all-gather.1 = bf16[256,1024]{1,0:T(8,128)(2,1)} all-gather(%p0), channel_id=14, replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_1'}, dimensions={0}
  %all-gather.2 = bf16[256,1024]{1,0:T(8,128)(2,1)S(1)} all-gather(%p1), channel_id=14, replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_1'}, dimensions={0}
  %all-gather.3 = bf16[256,1024]{1,0:T(8,128)(2,1)} all-gather(%p2), channel_id=14, replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_1'}, dimensions={0}
  %all-reduce.5 = (f32[256]{0:T(256)}, f32[1024,8]{1,0}) all-reduce(%a, %b), channel_id=3, replica_groups={{0,1,2,3}}, to_apply=%add
  %all-to-all = bf16[1,2,2,256,128]{3,4,2,0,1} all-to-all(%c), channel_id=9, replica_groups=[2,2]<=[4], dimensions={1}
  %collective-permute.1 = f32[64,64]{1,0} collective-permute(%d), channel_id=11, source_target_pairs={{0,1},{1,0}}
  %reduce-scatter.7 = f32[128]{0} reduce-scatter(%e), channel_id=12, replica_groups=[1,4]<=[4], dimensions={0}
  %add.1 = f32[] add(%x, %y)
"""


def test_collectives_parsed_once_per_channel_with_ring_traffic():
  c = collectives.parse_collectives(_HLO, num_devices=4)
  assert c.count == {"all-gather": 1, "all-reduce": 1, "all-to-all": 1,
                     "collective-permute": 1, "reduce-scatter": 1}
  ag = 256 * 1024 * 2
  ar = (256 + 1024 * 8) * 4
  a2a = 2 * 2 * 256 * 128 * 2
  assert c.result_bytes["all-gather"] == ag
  assert c.ici_bytes["all-gather"] == ag * 1 / 2             # group of 2 (axis_1)
  assert c.ici_bytes["all-reduce"] == 2 * ar * 3 / 4         # group of 4
  assert c.ici_bytes["all-to-all"] == a2a * 1 / 2            # iota groups [2,2]
  assert c.ici_bytes["collective-permute"] == 64 * 64 * 4
  assert c.ici_bytes["reduce-scatter"] == 128 * 4 * 3
  assert c.total_ici_bytes == pytest.approx(sum(c.ici_bytes.values()))


def _figs(scale):
  coll = collectives.Collectives({k: 2 for k in collectives.KINDS},
                                 {k: 10.0 * scale for k in collectives.KINDS},
                                 {k: 5.0 * scale for k in collectives.KINDS})
  return figures.StepFigures(argument_bytes=100 * scale, output_bytes=90 * scale,
                             alias_bytes=90 * scale, temp_bytes=7 * scale, flops=1e9 * scale,
                             bytes_accessed=3e6 * scale, transcendentals=0.0, collectives=coll)


def test_every_scan_iteration_counted_from_rolled_and_unrolled_compiles():
  # A step with outside cost 10 and body cost 5 per iteration; the compiler counts the body
  # once: rolled = 10 + 5. Unrolled twice, lax.scan runs the odd remainder outside the loop:
  # trips 96 -> 10 + 2 * 5; trips 7 -> 10 + 3 * 5. Every iteration: 10 + 5 * trips.
  rolled = figures.StepFigures(100, 90, 90, 7, 15, 15, 15, _figs(15).collectives)
  for trips, u2 in ((96, 20), (7, 25)):
    unrolled = figures.StepFigures(200, 180, 180, 70, u2, u2, u2, _figs(u2).collectives)
    f = figures.count_every_iteration(rolled, unrolled, trips)
    assert (f.flops, f.bytes_accessed, f.transcendentals) == pytest.approx((10 + 5 * trips,) * 3)
    assert f.collectives.ici_bytes["all-gather"] == pytest.approx(5 * (10 + 5 * trips))
    # Memory is the rolled program's, the one that runs.
    assert (f.argument_bytes, f.output_bytes, f.alias_bytes, f.temp_bytes) == (100, 90, 90, 7)
  refused = dataclasses.replace(unrolled, compiler_oom=True)
  f = figures.count_every_iteration(rolled, refused, 7)
  assert (f.flops, f.bytes_accessed) == (0.0, 0.0) and f.temp_bytes == 7   # n/a, not a guess
  assert figures.count_every_iteration(rolled, None, 1) is rolled
  with pytest.raises(ValueError, match="trips=0"):
    figures.count_every_iteration(rolled, rolled, 0)


def test_roofline_picks_the_slowest_resource_and_mfu_follows():
  chip = hardware.Chip("test", peak_bf16_flops=1e12, hbm_bytes=1000, hbm_bandwidth=1e9,
                       ici_bandwidth=1e8)
  f = _figs(1.0)   # 1e9 FLOPs -> 1 ms; 3e6 bytes -> 3 ms; 25 ICI bytes -> 0.25 us
  e = figures.estimate(f, chip, chips=4, tokens_per_step=1000, model_flops_per_token=2e6)
  assert e.t_flops == pytest.approx(1e-3)   # compiled 1e9 > model 2e9 / 4 chips
  assert e.t_hbm == pytest.approx(3e-3) and e.bound == "memory"
  assert e.step_time == pytest.approx(3e-3)
  assert e.mfu == pytest.approx(2e9 / (3e-3 * 4 * 1e12))
  assert e.tokens_per_second == pytest.approx(1000 / 3e-3)
  assert f.total_bytes == 107 and e.fits and e.hbm_fraction == pytest.approx(0.107)
  # When the model counts more FLOPs than the compiler saw (Pallas kernels), the model wins.
  e2 = figures.estimate(f, chip, chips=1, tokens_per_step=1000, model_flops_per_token=2e7)
  assert e2.t_flops == pytest.approx(2e10 / 1e12)


def test_topology_and_mesh_parsing_name_bad_input():
  chip, shape = hardware.parse_topology("v5p:4x4x4")
  assert chip.name == "v5p" and shape == (4, 4, 4) and hardware.num_chips("v5p:4x4x4") == 64
  with pytest.raises(ValueError, match="v9"):
    hardware.parse_topology("v9:2x2")
  with pytest.raises(ValueError, match="4xq"):
    hardware.parse_topology("v5e:4xq")
  assert config_flags.parse_mesh("fsdp=64,tensor=8") == {"fsdp": 64, "tensor": 8}
  with pytest.raises(ValueError, match="pipeline"):
    config_flags.parse_mesh("pipeline=4")
  with pytest.raises(ValueError, match="twice"):
    config_flags.parse_mesh("data=2,data=2")


def test_enumerated_meshes_respect_divisibility():
  cfg = get_config("nano1")                           # 8 heads, MQA, dense
  meshes = planner.enumerate_meshes(cfg, 16, batch=16, seq=1024)
  assert meshes and all(math.prod(m.values()) == 16 for m in meshes)
  assert all(m["expert"] == 1 and m["context"] == 1 for m in meshes)
  assert all(cfg.n_heads % m["tensor"] == 0 for m in meshes)
  assert {"data": 16, "fsdp": 1, "tensor": 1, "expert": 1, "context": 1} in meshes
  assert not any(m["tensor"] == 16 for m in meshes)   # 8 heads cannot split 16 ways
  pro = get_config("pro")
  ring = planner.enumerate_meshes(pro, 64, batch=4, seq=8192, attn_impl="ring")
  assert any(m["context"] > 1 for m in ring)
  assert all(4 % (m["data"] * m["fsdp"] * m["expert"]) == 0 for m in ring)
  assert all(64 % m["expert"] == 0 for m in ring)


def test_state_bytes_per_device_matches_hand_count():
  cfg = get_config("nano_tiny")
  params = spec.abstract_params(cfg)
  total = family.total_params(cfg) * 4
  assert planner.state_bytes_per_device(cfg, params, {"data": 4}) == 3 * total
  # fsdp=4 splits every matrix on its d_model dim; only the 2L+1 norm vectors stay whole.
  norms = (2 * cfg.n_layers + 1) * cfg.d_model * 4
  got = planner.state_bytes_per_device(cfg, params, {"fsdp": 4})
  assert got == pytest.approx(3 * ((total - norms) / 4 + norms))


_LOOP_HLO = """
%body (p: (s32[], f32[64])) -> (s32[], f32[64]) {
  %fusion.3 = f32[64]{0} fusion(%x), kind=kCustom, calls=%ring_step
}

%ring_step (a: f32[64]) -> f32[64] {
  %collective-permute.2 = f32[64]{0} collective-permute(%a), channel_id=5, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
}

%cond (p: (s32[], f32[64])) -> pred[] {
  %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[64]) -> f32[64] {
  %while.1 = (s32[], f32[64]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %all-reduce.9 = f32[64]{0} all-reduce(%y), channel_id=6, replica_groups={{0,1,2,3}}, to_apply=%add
}
"""


def test_collectives_in_while_loops_count_per_iteration():
  c = collectives.parse_collectives(_LOOP_HLO, num_devices=4)
  assert c.count["collective-permute"] == 3 and c.count["all-reduce"] == 1
  assert c.ici_bytes["collective-permute"] == 3 * 64 * 4
  assert c.ici_bytes["all-reduce"] == 2 * 64 * 4 * 3 / 4


def test_report_table_and_png_from_analyses(tmp_path):
  def analysis(total_scale, flops):
    f = _figs(total_scale)
    f.flops = flops
    return analyze.Analysis("nano1", "v5e:2x2", {"fsdp": 4}, 4, 1024, "xla", "xla", 18, 18,
                            f, 1e9, 3e9, 1.0, 1e10)
  fits = report.Result(report.Row("nano1", "v5e:2x2", 4, 1024), None, analysis(1e6, 1e12))
  too_big = report.Result(report.Row("nano1", "v5e:2x2", 4, 1024, attn_impl="ring"), None,
                          analysis(1e9, 0.0))
  failed = report.Result(report.Row("ultra", "v5e:2x2", 4, 1024), None, None, "boom")
  md = report.markdown([fits, too_big, failed])
  lines = [l for l in md.splitlines() if l.startswith("| nano1") or l.startswith("| ultra")]
  assert len(lines) == 3
  assert lines[0].endswith("| yes |") and "fsdp=4" in lines[0]
  assert "| ≤" in lines[0]          # compiled 1e12 < model 1e10 x 4096 / 4: an upper bound
  assert "**no**" in lines[1] and "| n/a |" in lines[1]     # refused program: no MFU
  assert "error: boom" in lines[2]
  assert "compiled all 18 layers (a scan of 18 blocks" in md
  png = tmp_path / "r.png"
  report.plot([fits, too_big, failed], str(png))
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
