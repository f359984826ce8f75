"""The scanned decoder's program does not grow with depth; the unrolled one does."""

from gemini.train.aot import compile_bench


def test_scanned_hlo_is_flat_in_depth_and_unrolled_is_not():
  size = {(layers, unroll): compile_bench.compile_step(
      compile_bench.nano1_shaped(layers, quick=True), 32, unroll)[1]
          for layers in (2, 8) for unroll in (True, False)}
  assert size[8, False] < 1.1 * size[2, False], size      # scan: one body whatever the depth
  assert size[8, True] > 2.5 * size[2, True], size        # unrolled: a body per layer
