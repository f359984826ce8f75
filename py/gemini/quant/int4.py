"""Group-wise int4 weights for the model: the kernel-level type and its quantiser.

`Int4Weight` and its pure quantise/pack/dequantise functions live with the kernel that reads
them (`pallas/int4_matmul/weight.py`, which documents the packing); this module is the name
the model, quantiser and exporter use for them.
"""

from pallas.int4_matmul.weight import (  # noqa: F401  (re-exported names)
    GROUP_SIZES, OFFSET, QMAX, SCALE_DTYPES, Int4Weight, dequantize, group_scales, int4_values,
    pack, padded_k, quantize, quantize_values, unpack)

__all__ = ["GROUP_SIZES", "OFFSET", "QMAX", "SCALE_DTYPES", "Int4Weight", "dequantize",
           "group_scales", "int4_values", "pack", "padded_k", "quantize", "quantize_values",
           "unpack"]
