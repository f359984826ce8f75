"""Quality filters, exact/near dedup, 13-gram decontamination, staged mixtures, the report."""

import random

import numpy as np
import pytest

from gemini.data import decontaminate, dedup, filters, mixtures, report

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
         "zulu").split()


def prose(rng, n_words):
  return " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(n_words))


def doc(text, i=0, source="s"):
  return {"id": f"{source}:{i}", "source": source, "text": text}


# ---------------------------------------------------------------- filters
def test_each_filter_rule_fires_and_is_counted():
  rng = random.Random(0)
  cfg = filters.FilterConfig()
  good = doc(prose(rng, 120))
  assert filters.check(good, cfg) is None
  cases = {
      "too_short": doc("just a few words here, seven of them"),
      "too_long": doc(prose(rng, 10) + " x" * cfg.max_chars),
      "symbol_ratio": doc(prose(rng, 20) + " " + "#$%&*{}[]<>|~^" * 20),
      "dup_lines": doc("\n".join(["the same line again and again"] * 6 + [prose(rng, 10)])),
      "top_trigram": doc(" ".join(["buy cheap pills"] * 30 + [prose(rng, 40)])),
  }
  for rule, d in cases.items():
    assert filters.check(d, cfg) == rule, rule
  kept, counts = filters.apply_filters([good] + list(cases.values()), cfg)
  assert kept == [good] and counts == {r: 1 for r in filters.RULES}


def test_filter_thresholds_are_the_documented_boundaries():
  # symbol ratio: exactly at the limit passes, above it fails; code has its own limit.
  text = "a" * 75 + "#" * 25
  assert filters.symbol_ratio(text) == 0.25
  body = " ".join(["word"] * 10) + " "
  cfg = filters.FilterConfig(min_chars=1, min_words=1)
  assert filters.check(doc("abcd" * 15 + "#" * 20), cfg) is None            # 20/80 = 0.25
  assert filters.check(doc("abcd" * 15 + "#" * 21), cfg) == "symbol_ratio"   # 21/81
  assert filters.check(doc("abcd" * 15 + "#" * 21, source="code"), cfg) is None
  assert filters.dup_line_fraction("a\nb\na\nc") == 0.25
  assert filters.dup_line_fraction("a\nb") is None  # too few lines to judge
  assert filters.check(doc(body), cfg) is None


# ---------------------------------------------------------------- dedup
def test_exact_dedup_normalises_case_and_space():
  docs = [doc("Hello   World foo", 0), doc("hello world\nFOO", 1), doc("other text", 2)]
  kept, n = dedup.exact_dedup(docs)
  assert n == 1 and [d["id"] for d in kept] == ["s:0", "s:2"]


def test_mulmod_exact_against_python_ints():
  rng = np.random.default_rng(0)
  p = (1 << 61) - 1
  a = rng.integers(0, p, 500, dtype=np.uint64)
  x = rng.integers(0, p, 500, dtype=np.uint64)
  a[:3] = [0, 1, p - 1]
  x[:3] = [p - 1, p - 1, p - 1]
  got = dedup._mulmod(a, x)
  want = [(int(i) * int(j)) % p for i, j in zip(a, x)]
  assert [int(g) for g in got] == want


def test_minhash_estimates_jaccard():
  rng = random.Random(1)
  base = [prose(rng, 1) for _ in range(600)]
  a_txt = " ".join(base)
  b_txt = " ".join(base[:450] + [prose(rng, 1) for _ in range(150)])
  sa, sb = dedup.shingles(a_txt), dedup.shingles(b_txt)
  true = dedup.jaccard(sa, sb)
  ka, kb = dedup.minhash_params(256)
  est = np.mean(dedup.minhash(sa, ka, kb) == dedup.minhash(sb, ka, kb))
  assert 0.4 < true < 0.8 and abs(est - true) < 0.08, (true, est)


def test_near_dedup_finds_edited_copies_only():
  rng = random.Random(2)
  originals = [doc(prose(rng, 300), i) for i in range(30)]
  copies = []
  for k, o in enumerate(originals[:6]):
    w = o["text"].split()
    for _ in range(3):
      w[rng.randrange(len(w))] = "edited"
    copies.append(doc(" ".join(w), 100 + k))
  docs = originals + copies
  kept, pairs = dedup.near_dedup(docs)
  assert sorted((docs[i]["id"], docs[j]["id"]) for i, j, _ in pairs) == \
      sorted((f"s:{k}", f"s:{100 + k}") for k in range(6))
  assert all(j >= 0.8 for _, _, j in pairs)
  assert [d["id"] for d in kept] == [d["id"] for d in originals]


# ---------------------------------------------------------------- decontamination
def test_decontamination_13gram_boundary():
  rng = random.Random(3)
  held = [doc(prose(rng, 80), 0, "held")]
  hw = held[0]["text"].split()
  index = decontaminate.NgramIndex(held)
  with13 = doc(prose(rng, 30) + " " + " ".join(hw[10:23]).upper() + ", " + prose(rng, 30), 1)
  with12 = doc(prose(rng, 30) + " " + " ".join(hw[10:22]) + " " + prose(rng, 30), 2)
  clean = doc(prose(rng, 100), 3)
  kept, hits = decontaminate.decontaminate([with13, with12, clean], index)
  assert hits == [("s:1", ["held:0"])] and [d["id"] for d in kept] == ["s:2", "s:3"]


# ---------------------------------------------------------------- mixtures
def test_staged_mixture():
  counts = {"web": 10_000, "code": 1_000, "math": 100}
  base = mixtures.base_weights(counts, alpha=0.5)
  assert base["web"] / base["code"] == pytest.approx(10_000 ** 0.5 / 1_000 ** 0.5)
  assert sum(base.values()) == pytest.approx(1.0)
  m = mixtures.staged_mixture(counts, total_batches=1000, domains=["math"], late_fraction=0.1,
                              boost=5.0, alpha=0.5)
  (u0, w0), (u1, w1) = m.resolve(["web", "code", "math"])
  assert (u0, u1) == (900, -1)
  assert w1[2] / w1[0] == pytest.approx(5 * w0[2] / w0[0]) and sum(w1) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="not among sources"):
    mixtures.staged_mixture(counts, 10, domains=["law"])
  assert len(mixtures.staged_mixture(counts, 10).stages) == 1


# ---------------------------------------------------------------- report
def test_report_finds_all_planted_cases():
  rng = random.Random(4)
  docs = {"a": [doc(prose(rng, 250), i, "a") for i in range(40)],
          "b": [doc(prose(rng, 120), i, "b") for i in range(40)] + [doc("tiny", 99, "b")]}
  r = report.run_report(docs, heldout_per_source=4, planted=5, seed=1)
  assert r["near_planted"] == 5 and r["near_planted_found"] == 5
  assert r["cont_planted"] == 5 and r["cont_planted_found"] == 5
  assert r["rows"]["b"]["too_short"] == 1 and r["heldout_docs"] == 8
  # Random prose shares no 13-gram by chance: the only hits are the planted ones.
  assert len(r["contaminated"]) == 5
