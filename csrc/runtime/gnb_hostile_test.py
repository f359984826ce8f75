""".gnb files that are hostile but checksum-valid, against the one reader (csrc/runtime/gnb.h)
as nano_run, `_runtime.Runtime` and Python's `gemini.export.gnb.decode` use it.

The files are written here by a small writer of our own (FORMAT.md's layout, every CRC
computed), so a mutation can only be caught by a bounds or value check. One test per
finding: config values out of range, integers past 32 bits, size products that overflow,
unknown/unused/duplicate/empty-named/aliasing tensors, non-strict JSON, the tokenizer blob,
qk_norm tensors derived from the config, FIFOs as paths, CLI integers; then a seeded mutation
sweep in which every mutant is refused with a message naming the file or loads to a model
whose config is in range and whose logits are finite."""

import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from csrc.runtime import _runtime
from gemini.crc32c import crc32c
from gemini.export import gnb

HANG_SECONDS = 60  # A reader still busy after this long is blocked, not working.
V, D, L, H, K, DH, F, G = 64, 32, 2, 2, 1, 16, 64, 32

CONFIG = {"name": "hostile", "vocab_size": V, "d_model": D, "n_layers": L, "n_heads": H,
          "n_kv_heads": K, "head_dim": DH, "d_ff": F, "max_seq_len": 64, "rope_base": 10000.0,
          "norm_eps": 1e-6, "logit_softcap": 0.0, "tie_embeddings": True, "activation": "gelu",
          "group_size": G, "bos_id": 1, "eos_id": 2, "add_bos": False, "chat_template": ""}


def int4_data(rng, n, k):
  kp = -(-k // G) * G
  packed = rng.integers(0, 256, n * kp // 2, dtype=np.uint8).tobytes()
  return packed + np.full(n * kp // G, 0.02, np.float16).tobytes()


def model_tensors(cfg=CONFIG, seed=0):
  """(name, dtype, shape, group, data) of the dense decoder FORMAT.md lists, written out by
  hand here (not from the reader's own list)."""
  rng = np.random.default_rng(seed)
  d, dh, v = cfg["d_model"], cfg["head_dim"], cfg["vocab_size"]
  ones = lambda n: (gnb.F32, (n,), 0, np.ones(n, np.float32).tobytes())
  mat = lambda n, k: (gnb.INT4_F16, (n, k), G, int4_data(rng, n, k))
  out = [("embed",) + mat(v, d)]
  for i in range(cfg["n_layers"]):
    p = f"layers.{i}."
    out.append((p + "attn_norm",) + ones(d))
    if cfg.get("qk_norm"):
      out += [(p + "q_norm",) + ones(dh), (p + "k_norm",) + ones(dh)]
    out += [(p + "wq",) + mat(cfg["n_heads"] * dh, d), (p + "wk",) + mat(cfg["n_kv_heads"] * dh, d),
            (p + "wv",) + mat(cfg["n_kv_heads"] * dh, d), (p + "wo",) + mat(d, cfg["n_heads"] * dh),
            (p + "mlp_norm",) + ones(d), (p + "w_gate",) + mat(cfg["d_ff"], d),
            (p + "w_up",) + mat(cfg["d_ff"], d), (p + "w_down",) + mat(d, cfg["d_ff"])]
  out.append(("final_norm",) + ones(d))
  if not cfg["tie_embeddings"]:
    out.append(("unembed",) + mat(v, d))
  return out


def write_gnb(config, tensors, tok_kind=0, tok=b"", *, offsets=None, nbytes=None) -> bytes:
  """FORMAT.md's layout with every CRC computed. `config` is a dict or the raw JSON bytes;
  `offsets`/`nbytes` override table entries by index (aliasing, lying sizes)."""
  cfg = config if isinstance(config, bytes) else json.dumps(config).encode()
  names = [n.encode() if isinstance(n, str) else n for n, *_ in tensors]
  table_len = sum(28 + len(n) + 8 * len(t[2]) for n, t in zip(names, tensors))
  header_bytes = 48 + len(cfg) + len(tok) + table_len + 4
  pos, offs = -(-header_bytes // 64) * 64, []
  for _, _, _, _, data in tensors:
    offs.append(pos)
    pos = -(-(pos + len(data)) // 64) * 64
  offs = [(offsets or {}).get(i, o) for i, o in enumerate(offs)]
  file_bytes = max([o + len(t[4]) for o, t in zip(offs, tensors)] + [header_bytes])
  head = struct.pack("<8sIIQIIQII", b"GEMINANO", 1, header_bytes, file_bytes, len(cfg), tok_kind,
                     len(tok), len(tensors), 0) + cfg + tok
  for i, (name, (_, dtype, shape, group, data)) in enumerate(zip(names, tensors)):
    n = (nbytes or {}).get(i, len(data))
    head += (struct.pack("<H", len(name)) + name + struct.pack("<BBI", dtype, len(shape), group)
             + struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<QQI", offs[i], n, crc32c(data[:n])))
  head += struct.pack("<I", crc32c(head))
  out = bytearray(file_bytes)
  out[:len(head)] = head
  for o, t in zip(offs, tensors):
    out[o:o + len(t[4])] = t[4]
  return bytes(out)


def bpe_blob(tokens, merges, specials=(), flags=0, letters=((65, 90), (97, 122)),
             numbers=((48, 57),), trailing=b""):
  out = struct.pack("<I", len(tokens)) + b"".join(struct.pack("<H", len(t)) + t for t in tokens)
  out += struct.pack("<I", len(merges)) + b"".join(struct.pack("<II", a, b) for a, b in merges)
  out += struct.pack("<I", len(specials)) + b"".join(struct.pack("<I", i) for i in specials)
  out += struct.pack("<I", flags)
  for table in (letters, numbers):
    out += struct.pack("<I", len(table)) + b"".join(struct.pack("<II", lo, hi) for lo, hi in table)
  return out + trailing


# 64 tokens: the printable ASCII letters/digits as single bytes, then merged pairs.
TOKENS = [bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
TOKENS += [b"ab", b"abc"]
MERGES = [(0, 1), (62, 2)]


def refusal(data: bytes, name="h.gnb") -> str:
  """The reader's message for `data` (via Python's gnb.decode and _runtime.parse_bytes, which
  must agree), or '' when both accept it."""
  msgs = []
  for parse in (lambda: gnb.decode(data, name), lambda: _runtime.parse_bytes(data, name)):
    try:
      parse()
      msgs.append("")
    except ValueError as e:
      msgs.append(str(e))
  assert msgs[0] == msgs[1], msgs
  return msgs[0]


def test_the_writer_here_makes_a_file_the_reader_accepts():
  data = write_gnb(CONFIG, model_tensors(), gnb.TOK_BPE, bpe_blob(TOKENS, MERGES))
  assert refusal(data) == ""
  f = gnb.decode(data, "h.gnb")
  assert f.config == dict(CONFIG, qk_norm=False)  # the optional key at its default
  assert list(f.tensors) == [t[0] for t in model_tensors()]


CONFIG_CASES = [
    ("norm_eps", -1.0, "'norm_eps' = -1.0 must be in (0, 1)"),
    ("norm_eps", 0.0, "'norm_eps' = 0.0 must be in (0, 1)"),
    ("rope_base", 0.0, "'rope_base' = 0.0 must be > 1"),
    ("rope_base", -5.0, "'rope_base' = -5.0 must be > 1"),
    ("logit_softcap", 1e-30, "'logit_softcap' = 1e-30 must be 0 (off) or >= 1"),
    ("bos_id", 2 ** 31, "'bos_id' = 2147483648 out of range [-1, 16777215]"),
    ("n_layers", 2 ** 32 + 2, "'n_layers' = 4294967298 out of range [1, 1024]"),
    ("vocab_size", 2 ** 70, "'vocab_size' = 1180591620717411303424 out of range [1, 16777216]"),
    ("eos_id", V, f"eos_id={V} outside the vocabulary [0, {V})"),
    ("eos_id", -2, "'eos_id' = -2 out of range [-1, 16777215]"),
    ("d_model", 0, "'d_model' = 0 out of range [1, 65536]"),
    ("n_kv_heads", 3, "n_heads=2 is not a multiple of n_kv_heads=3"),
    ("head_dim", 15, "head_dim=15 must be even"),
    ("max_seq_len", 1.5, "'max_seq_len' = 1.5 is not an integer"),
    ("add_bos", 1, "'add_bos' = 1 is not true/false"),
    ("activation", "relu", "activation='relu' not gelu|silu"),
    ("name", "", "'name' is empty"),
    ("qk_norm", "yes", "'qk_norm' = \"yes\" is not true/false"),
]


@pytest.mark.parametrize("key,value,want", CONFIG_CASES, ids=[f"{k}={v}" for k, v, _ in CONFIG_CASES])
def test_config_values_are_range_checked(key, value, want):
  cfg = dict(CONFIG, **{key: value})
  msg = refusal(write_gnb(cfg, model_tensors(CONFIG)))
  assert msg.startswith("h.gnb: config: ") and want in msg, msg


def test_config_add_bos_needs_a_bos_and_ids_must_be_tokens():
  assert "add_bos is true but bos_id=-1" in refusal(
      write_gnb(dict(CONFIG, add_bos=True, bos_id=-1), model_tensors()))
  # bos 63 is inside vocab_size (64) but the tokenizer has only 40 tokens.
  tok = bpe_blob(TOKENS[:40], [])
  assert refusal(write_gnb(dict(CONFIG, bos_id=39), model_tensors(), gnb.TOK_BPE, tok)) == ""
  msg = refusal(write_gnb(dict(CONFIG, bos_id=63), model_tensors(), gnb.TOK_BPE, tok))
  assert "bos_id=63 is not a token of the tokenizer (40 tokens)" in msg, msg


def _raw_config(text: str) -> bytes:
  return text.encode("latin-1") if isinstance(text, str) else text


STRICT_JSON_CASES = {
    "duplicate key": (json.dumps(CONFIG)[:-1] + ', "norm_eps": 1e-5}', "duplicate key 'norm_eps'"),
    "trailing garbage": (json.dumps(CONFIG) + "xyz", "3 trailing bytes after the object"),
    "second object": (json.dumps(CONFIG) + "{}", "2 trailing bytes after the object"),
    "invalid UTF-8": (json.dumps(CONFIG).replace('"hostile"', '"ho\xffstile"'), "not valid UTF-8 at byte"),
    "NaN": (json.dumps(dict(CONFIG, norm_eps=float("nan"))), "'norm_eps' = NaN is not a JSON value"),
    "Infinity": (json.dumps(dict(CONFIG, rope_base=float("inf"))), "'rope_base' = Infinity is not a JSON value"),
    "hex": (json.dumps(CONFIG).replace('"d_ff": 64', '"d_ff": 0x40'), "'d_ff' = 0x40 is not a JSON number"),
    "unknown key": (json.dumps(dict(CONFIG, dropout=0.1)), "unknown key 'dropout'"),
    "missing key": (json.dumps({k: v for k, v in CONFIG.items() if k != "d_ff"}), "missing key 'd_ff'"),
    "nested": (json.dumps(dict(CONFIG, name={"a": 1})), "'name' is a nested object"),
    "lone surrogate": (json.dumps(CONFIG).replace('"hostile"', '"\\ud800x"'), "lone high surrogate"),
    "raw newline": (json.dumps(CONFIG).replace('"hostile"', '"a\nb"'), "raw control character 10"),
}


@pytest.mark.parametrize("case", list(STRICT_JSON_CASES))
def test_config_json_is_strict(case):
  text, want = STRICT_JSON_CASES[case]
  msg = refusal(write_gnb(_raw_config(text), model_tensors()))
  assert msg.startswith("h.gnb: config: ") and want in msg, msg


def test_size_product_overflow_is_refused():
  huge = ("extra", gnb.F32, (2 ** 32, 2 ** 32), 0, b"")  # 2^64 f32 elements, nbytes 0
  msg = refusal(write_gnb(CONFIG, model_tensors() + [huge]))
  assert "tensor 'extra': shape's byte count overflows 64 bits" in msg, msg


def _tensor_case(kind):
  t = model_tensors()
  norm = t[1]  # layers.0.attn_norm
  if kind == "unknown":
    return write_gnb(CONFIG, t + [("bogus",) + norm[1:]]), "tensor 'bogus' is not part of the model the config describes (unknown name)"
  if kind == "unused layer":
    return write_gnb(CONFIG, t + [("layers.2.attn_norm",) + norm[1:]]), "tensor 'layers.2.attn_norm' is not part of the model the config describes (n_layers=2)"
  if kind == "unused unembed":
    return write_gnb(CONFIG, t + [("unembed",) + t[0][1:]]), "tensor 'unembed' is not part of the model the config describes (tie_embeddings is true)"
  if kind == "empty name":
    return write_gnb(CONFIG, t + [("",) + norm[1:]]), f"tensor {len(t)} has an empty name"
  if kind == "duplicate":
    return write_gnb(CONFIG, t + [norm]), "tensor 'layers.0.attn_norm' appears twice in the table"
  if kind == "aliasing":
    # final_norm's entry points at layers.0.attn_norm's bytes (same size, same CRC).
    offs = {n: o for n, _, o, _ in table_entries(write_gnb(CONFIG, t))}
    return (write_gnb(CONFIG, t, offsets={len(t) - 1: offs[b"layers.0.attn_norm"]}),
            "tensors 'layers.0.attn_norm' and 'final_norm' overlap")
  if kind == "missing":
    return write_gnb(CONFIG, t[:-1]), "missing tensor 'final_norm'"
  if kind == "bad shape":
    t[1] = (t[1][0], gnb.F32, (D + 1,), 0, np.ones(D + 1, np.float32).tobytes())
    return write_gnb(CONFIG, t), f"tensor 'layers.0.attn_norm': shape [{D + 1}] but the config needs [{D}]"
  if kind == "group on f32":
    t[1] = t[1][:3] + (32,) + t[1][4:]
    return write_gnb(CONFIG, t), "group_size=32 on a non-int4 tensor"
  raise ValueError(kind)


@pytest.mark.parametrize("kind", ["unknown", "unused layer", "unused unembed", "empty name", "duplicate",
                                  "aliasing", "missing", "bad shape", "group on f32"])
def test_tensor_table_matches_the_config_exactly(kind):
  data, want = _tensor_case(kind)
  msg = refusal(data)
  assert msg.startswith("h.gnb: ") and want in msg, msg


def test_qk_norm_tensors_follow_the_config():
  qk = dict(CONFIG, qk_norm=True)
  assert refusal(write_gnb(qk, model_tensors(qk))) == ""
  assert gnb.decode(write_gnb(qk, model_tensors(qk))).tensors["layers.1.k_norm"].shape == (DH,)
  assert "missing tensor 'layers.0.q_norm'" in refusal(write_gnb(qk, model_tensors(CONFIG)))
  assert "tensor 'layers.0.q_norm' is not part of the model the config describes (qk_norm is false)" in \
      refusal(write_gnb(CONFIG, model_tensors(qk)))
  bad = model_tensors(qk)
  bad[2] = (bad[2][0], gnb.F32, (D,), 0, np.ones(D, np.float32).tobytes())
  assert f"tensor 'layers.0.q_norm': shape [{D}] but the config needs [{DH}]" in refusal(write_gnb(qk, bad))


TOKENIZER_CASES = {
    "merge id past the vocabulary": (bpe_blob(TOKENS, [(0, 70)]), "merge 0 (0, 70) names a token id past n_vocab=64"),
    "merge not a token": (bpe_blob(TOKENS, [(1, 0)]), "merge 0 (1, 0) makes a string that is not a token"),
    "n_vocab past vocab_size": (bpe_blob(TOKENS + [b"zz"], []), "n_vocab=65 out of range [1, vocab_size=64]"),
    "special past the vocabulary": (bpe_blob(TOKENS, [], specials=[64]), "special token id 64 past n_vocab=64"),
    "trailing bytes": (bpe_blob(TOKENS, MERGES, trailing=b"\0\0"), "blob has 2 trailing bytes"),
    "empty token": (bpe_blob(TOKENS[:10] + [b""], []), "token 10 is empty"),
    "repeated token": (bpe_blob(TOKENS[:10] + [b"a"], []), "token 10 'a' appears twice"),
    "unsorted ranges": (bpe_blob(TOKENS, [], letters=((97, 122), (65, 90))), "letter range 1 [65, 90] not sorted"),
    "range past U+10FFFF": (bpe_blob(TOKENS, [], numbers=((48, 0x110000),)), "number range 0 [48, 1114112]"),
    "unknown flags": (bpe_blob(TOKENS, [], flags=6), "flags=6 has unknown bits"),
    "n_merges past the blob": (struct.pack("<I", 1) + struct.pack("<H", 1) + b"a" + struct.pack("<I", 2 ** 30),
                               "n_merges=1073741824 does not fit the blob"),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_tokenizer_blob_is_validated(case):
  blob, want = TOKENIZER_CASES[case]
  msg = refusal(write_gnb(CONFIG, model_tensors(), gnb.TOK_BPE, blob))
  assert msg.startswith("h.gnb: tokenizer: ") and want in msg, msg


def test_tokenizer_kinds_none_and_sentencepiece_are_checked():
  msg = refusal(write_gnb(CONFIG, model_tensors(), gnb.TOK_NONE, b"junk"))
  assert "tokenizer_kind=0 (none) but tokenizer_bytes=4" in msg, msg
  # A SentencePiece blob that is not a protobuf: field 1 claims 100 bytes, 2 follow.
  msg = refusal(write_gnb(CONFIG, model_tensors(), gnb.TOK_SENTENCEPIECE, b"\x0a\x64ab"))
  assert "tokenizer: SentencePiece model: field at byte 0 runs past the end" in msg, msg
  # 65 well-formed pieces for a 64-token vocabulary.
  pieces = b"".join(b"\x0a\x03\x0a\x01" + bytes([65 + i % 26]) for i in range(65))
  msg = refusal(write_gnb(CONFIG, model_tensors(), gnb.TOK_SENTENCEPIECE, pieces))
  assert "65 pieces, expected [1, vocab_size=64]" in msg, msg


def _nano_run():
  here = os.path.dirname(os.path.abspath(__file__))
  for cand in (os.path.join(here, "nano_run"), os.path.join("bazel-bin", "csrc", "runtime", "nano_run")):
    if os.path.exists(cand):
      return cand
  pytest.fail("nano_run binary not built")


def _run(args, timeout=HANG_SECONDS):
  try:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    pytest.fail(f"{args} still running after {timeout} s (blocked)")


def test_nano_run_refuses_bad_config_values(tmp_path):
  path = tmp_path / "eps.gnb"
  path.write_bytes(write_gnb(dict(CONFIG, norm_eps=-1.0), model_tensors()))
  out = _run([_nano_run(), "--model", str(path), "--prompt_ids", "1,2"])
  assert out.returncode == 1 and f"{path}: config: 'norm_eps' = -1.0 must be in (0, 1)" in out.stderr, out.stderr


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_non_regular_model_paths_are_refused_without_blocking(tmp_path, kind):
  if kind == "fifo":
    path = str(tmp_path / "model.gnb")
    os.mkfifo(path)
    what = "a FIFO"
  elif kind == "directory":
    path, what = str(tmp_path), "a directory"
  else:
    path, what = "/dev/zero", "a character device"
  want = f"{path}: cannot open: not a regular file ({what})"
  out = _run([_nano_run(), "--model", path, "--prompt_ids", "1"])
  assert out.returncode == 1 and want in out.stderr, out.stderr
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
  code = f"from csrc.runtime import _runtime\n_runtime.Runtime({path!r})"
  try:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=HANG_SECONDS)
  except subprocess.TimeoutExpired:
    pytest.fail(f"_runtime.Runtime blocked on {path}")
  assert out.returncode == 1 and want in out.stderr, out.stderr
  gnb_code = f"from gemini.export import gnb\ngnb.read({path!r})"
  try:
    out = subprocess.run([sys.executable, "-c", gnb_code], env=env, capture_output=True, text=True,
                         timeout=HANG_SECONDS)
  except subprocess.TimeoutExpired:
    pytest.fail(f"gnb.read blocked on {path}")
  assert out.returncode == 1 and want in out.stderr, out.stderr


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
  path = tmp_path_factory.mktemp("gnb") / "good.gnb"
  path.write_bytes(write_gnb(CONFIG, model_tensors()))
  return str(path)


# Each case is valid but for the one value (prompt + max_tokens fits max_seq_len=64).
CLI_CASES = [
    (["--prompt_ids", "4294967297"], "--prompt_ids=4294967297: item 0 '4294967297' must be an integer in [0, 63]"),
    (["--prompt_ids", "1,-1"], "--prompt_ids=1,-1: item 1 '-1' must be an integer in [0, 63]"),
    (["--prompt_ids", "1,,2"], "--prompt_ids=1,,2: item 1 '' must be an integer in [0, 63]"),
    (["--prompt_ids", "1,2,"], "--prompt_ids=1,2,: item 2 '' must be an integer in [0, 63]"),
    (["--prompt_ids", "64"], "--prompt_ids=64: item 0 '64' must be an integer in [0, 63]"),
    (["--max_tokens", "4294967297"], "--max_tokens=4294967297: must be an integer in [1, 2147483647]"),
    (["--max_tokens", "-3"], "--max_tokens=-3: must be an integer in [1, 2147483647]"),
    (["--max_tokens", "12abc"], "--max_tokens=12abc: must be an integer in [1, 2147483647]"),
    (["--max_tokens", "100"], "prompt (1 tokens) + --max_tokens=100 = 101 exceeds max_seq_len=64"),
    (["--threads", "0"], "--threads=0: must be an integer in [1, 256]"),
    (["--threads", "99999999999"], "--threads=99999999999: must be an integer in [1, 256]"),
    (["--top_k", "-1"], "--top_k=-1: must be an integer in [0, 2147483647]"),
    (["--top_k", "4294967297"], "--top_k=4294967297: must be an integer in [0, 2147483647]"),
    (["--seed", "-1"], "--seed=-1: must be an integer in [0, 18446744073709551615]"),
    (["--top_p", "nan"], "--top_p=nan: must be a number in (0, 1]"),
    (["--temperature", "-0.5"], "--temperature=-0.5: must be a number in [0, 1e+06]"),
]


def _cli_args(args):
  """The case's flags over a valid base (prompt 1, 4 new tokens)."""
  base = {"--prompt_ids": "1", "--max_tokens": "4"}
  base.update(dict(zip(args[::2], args[1::2])))
  return [x for kv in base.items() for x in kv]


@pytest.mark.parametrize("args,want", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_nano_run_cli_integers_are_range_checked(good_model, args, want):
  out = _run([_nano_run(), "--model", good_model] + _cli_args(args))
  assert out.returncode == 1 and want in out.stderr, out.stderr


def test_nano_run_generates_from_the_hostile_writers_file(good_model):
  out = _run([_nano_run(), "--model", good_model, "--prompt_ids", "1,2,3", "--max_tokens", "4"])
  assert out.returncode == 0, out.stderr
  ids = [int(x) for x in out.stdout.split("output_ids:")[1].split("\n")[0].split()]
  assert len(ids) == 4 and all(0 <= i < V for i in ids)


def _config_in_range(c):
  """FORMAT.md's ranges, restated here independently of the reader."""
  return (1 <= c["vocab_size"] <= 2 ** 24 and 1 <= c["d_model"] <= 2 ** 16 and 1 <= c["n_layers"] <= 1024
          and 1 <= c["n_kv_heads"] <= c["n_heads"] <= 1024 and c["n_heads"] % c["n_kv_heads"] == 0
          and 2 <= c["head_dim"] <= 1024 and c["head_dim"] % 2 == 0 and 1 <= c["d_ff"] <= 2 ** 20
          and 1 <= c["max_seq_len"] <= 2 ** 24 and c["group_size"] in (32, 64, 128)
          and -1 <= c["bos_id"] < c["vocab_size"] and -1 <= c["eos_id"] < c["vocab_size"]
          and math.isfinite(c["rope_base"]) and c["rope_base"] > 1 and 0 < c["norm_eps"] < 1
          and (c["logit_softcap"] == 0 or 1 <= c["logit_softcap"] < math.inf)
          and c["activation"] in ("gelu", "silu"))


def table_entries(b) -> list:
  """(name, entry position of its offset field, offset, nbytes) of each table entry, walked
  by hand (FORMAT.md) as far as the bytes allow."""
  out = []
  try:
    hb = struct.unpack_from("<I", b, 12)[0]
    pos = 48 + struct.unpack_from("<I", b, 24)[0] + struct.unpack_from("<Q", b, 32)[0]
    for _ in range(struct.unpack_from("<I", b, 40)[0]):
      if pos >= hb - 4:
        break
      (nlen,) = struct.unpack_from("<H", b, pos)
      name = bytes(b[pos + 2:pos + 2 + nlen])
      ndim = b[pos + 2 + nlen + 1]
      e = pos + 2 + nlen + 6 + 8 * ndim
      off, n = struct.unpack_from("<QQ", b, e)
      out.append((name, e, off, n))
      pos = e + 20
  except (struct.error, IndexError):
    pass
  return out


def _reseal(b: bytearray) -> bytes:
  """Recomputes every in-bounds tensor CRC, then the header CRC, after a mutation."""
  hb = struct.unpack_from("<I", b, 12)[0]
  if not 52 <= hb <= len(b):
    return bytes(b)
  for _, e, off, n in table_entries(b):
    if off + n <= len(b) and e + 20 <= hb - 4:
      struct.pack_into("<I", b, e + 16, crc32c(bytes(b[off:off + n])))
  struct.pack_into("<I", b, hb - 4, crc32c(bytes(b[:hb - 4])))
  return bytes(b)


def test_mutation_sweep_every_mutant_is_refused_or_runs(tmp_path):
  """Mutants of a valid file's header (config text, tokenizer, table) and data, all CRCs
  recomputed: each is refused with a message naming the file, or it loads, its config is in
  FORMAT.md's ranges and a forward pass gives finite logits."""
  base = write_gnb(CONFIG, model_tensors(), gnb.TOK_BPE, bpe_blob(TOKENS, MERGES))
  hb = struct.unpack_from("<I", base, 12)[0]
  cfg_text = json.dumps(CONFIG).encode()
  rng = np.random.default_rng(15)
  digits = [i for i in range(48, 48 + len(cfg_text)) if chr(base[i]).isdigit() or base[i] in b"-.e"]
  counts = {"refused": 0, "ran": 0}
  for it in range(300):
    b = bytearray(base)
    kind = it % 4
    if kind == 0:    # a digit or sign of a config number
      b[int(rng.choice(digits))] = int(rng.choice(list(b"0123456789-.eE+x ")))
    elif kind == 1:  # any header byte
      b[int(rng.integers(0, hb - 4))] = int(rng.integers(0, 256))
    elif kind == 2:  # a table integer set to an extreme
      at = int(rng.integers(48 + len(cfg_text), hb - 12))
      extremes = [0, 1, 2 ** 31, 2 ** 32, 2 ** 63, 2 ** 64 - 1]
      struct.pack_into("<Q", b, at, extremes[int(rng.integers(len(extremes)))])
    else:            # data bytes (weights): CRC-valid garbage must still run finitely
      for _ in range(8):
        b[int(rng.integers(-(-hb // 64) * 64, len(b)))] = int(rng.integers(0, 256))
    data = _reseal(b)
    try:
      f = gnb.decode(data, "m.gnb")
    except ValueError as e:
      assert str(e).startswith("m.gnb: "), str(e)
      counts["refused"] += 1
      continue
    assert _config_in_range(f.config), f.config
    path = tmp_path / "m.gnb"
    path.write_bytes(data)
    logits = _runtime.Runtime(str(path)).logits([1, 2, 3])
    assert logits.shape == (3, f.config["vocab_size"]) and np.isfinite(logits).all()
    counts["ran"] += 1
  print("mutation sweep:", counts)
  assert counts["refused"] > 60 and counts["ran"] > 60, counts
