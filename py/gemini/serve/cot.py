"""Uncertainty-routed chain of thought (Gemini 1.0 report): sample k chains, answer with the
majority answer when its share of the k votes reaches a threshold, else with the greedy chain.
The vote (answers, counts, share, which route was taken) goes back in the response."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Dict

from gemini.serve import chat


def answer_key(text: str) -> str:
  """What a chain votes for: its last non-empty line, case- and space-normalised."""
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  return " ".join(lines[-1].lower().split()) if lines else ""


async def routed(backend, job: chat.Job, k: int, threshold: float,
                 temperature: float = 0.7) -> "tuple[chat.Result, Dict]":
  if k < 1 or not 0.0 < threshold <= 1.0:
    raise chat.BadRequest(f"cot: samples={k} must be >= 1 and threshold={threshold} in (0, 1]",
                          "cot")
  sampled = dataclasses.replace(job, n=k, params=dataclasses.replace(
      job.params, temperature=max(job.params.temperature, temperature)))
  greedy = dataclasses.replace(job, n=1, params=dataclasses.replace(job.params, temperature=0.0))
  reqs = chat.make_requests(sampled, backend) + chat.make_requests(greedy, backend)
  results = await asyncio.gather(*(chat.collect(backend, r, job) for r in reqs))
  chains, greedy_res = results[:k], results[k]
  votes = collections.Counter(answer_key(r.text) for r in chains)
  top, count = votes.most_common(1)[0]
  share = count / k
  use_majority = share >= threshold
  chosen = next(r for r in chains if answer_key(r.text) == top) if use_majority else greedy_res
  vote = {"samples": k, "threshold": threshold, "votes": dict(votes), "majority": top,
          "majority_share": share, "route": "majority" if use_majority else "greedy",
          "greedy": answer_key(greedy_res.text)}
  return chosen, vote
