"""Prometheus metrics of one server (its own registry, no process-global state)."""

from __future__ import annotations

import time

import prometheus_client as prom

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:

  def __init__(self):
    r = self.registry = prom.CollectorRegistry()
    self.queue_depth = prom.Gauge("serve_queue_depth", "requests waiting or prefilling", registry=r)
    self.running = prom.Gauge("serve_running_slots", "slots decoding", registry=r)
    self.tokens = prom.Counter("serve_generated_tokens", "tokens sampled for requests", registry=r)
    self.tokens_per_s = prom.Gauge("serve_tokens_per_second", "tokens/s of the last decode step",
                                   registry=r)
    self.ttft = prom.Histogram("serve_time_to_first_token_seconds", "submit -> first token",
                               buckets=_LATENCY, registry=r)
    self.itl = prom.Histogram("serve_inter_token_latency_seconds", "between a request's tokens",
                              buckets=_LATENCY, registry=r)
    self.prefill_tokens = prom.Counter("serve_prefill_tokens", "prompt tokens", registry=r)
    self.prefix_hits = prom.Counter("serve_prefix_cache_hits", "prompts that reused cached KV",
                                    registry=r)
    self.prefix_saved = prom.Counter("serve_prefix_cache_tokens_saved",
                                     "prompt tokens restored instead of prefilled", registry=r)
    self.requests = prom.Counter("serve_requests", "HTTP requests", ["route", "code"], registry=r)

  def gauges(self, queued: int, running: int):
    self.queue_depth.set(queued)
    self.running.set(running)

  def prefill(self, length: int, cached: int):
    self.prefill_tokens.inc(length)
    if cached:
      self.prefix_hits.inc()
      self.prefix_saved.inc(cached)

  def step(self, n_active_before: int, seconds: float, running: int):
    del n_active_before
    self.running.set(running)
    if seconds > 0:
      self.tokens_per_s.set(running / seconds)

  def finished(self, tracker):
    req = tracker.req
    times = req.token_times
    self.tokens.inc(len(times))
    if req.t_first is not None:
      self.ttft.observe(req.t_first - req.t_submit)
    for a, b in zip(times, times[1:]):
      self.itl.observe(b - a)

  def render(self) -> bytes:
    return prom.generate_latest(self.registry)

  @staticmethod
  def now() -> float:
    return time.monotonic()
