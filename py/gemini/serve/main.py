"""The serving target:

  tools/bazel run //py/gemini/serve -- --gguf=smollm2 --port 8000
  tools/bazel run //py/gemini/serve -- --checkpoint=/tmp/gemini-demo
  tools/bazel run //py/gemini/serve -- --gguf=smollm2 --backend=native
  tools/bazel run //py/gemini/serve -- --gnb=/tmp/smollm2.gnb

Listens on 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import os

from absl import app as absl_app
from absl import flags

from gemini import config_flags, sharding
from gemini.export import gnb
from gemini.quant import params as quant_params
from gemini.serve import app as app_lib, gnb_params
from gemini.serve import backends, engine, loading, media, metrics as metrics_lib, native_engine

_CKPT = flags.DEFINE_string("checkpoint", "", "training workdir or its checkpoints/ folder")
_CONFIG = flags.DEFINE_string("config", "", "preset replacing the config the --checkpoint "
                              "records (only for checkpoints that record none)")
_TOK = flags.DEFINE_string("tokenizer", "", "SentencePiece model replacing the one the "
                           "--checkpoint (or --gnb) records")
_GGUF = flags.DEFINE_string("gguf", "", "'smollm2' or a Llama-architecture .gguf path")
_GNB = flags.DEFINE_string("gnb", "", ".gnb file: the native int4 runtime (--backend=jax: JAX int4)")
_BACKEND = flags.DEFINE_enum("backend", "auto", ["auto", "jax", "native"],
                             "auto: --gnb on the native runtime, the rest on JAX; --gguf "
                             "--backend=native runs the GGUF's quantised weights natively; "
                             "--gnb --backend=jax serves the file's int4 tree through JAX")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "listen address")
_PORT = flags.DEFINE_integer("port", 8000, "listen port")
_SLOTS = flags.DEFINE_integer("slots", 8, "concurrent sequences decoded together")
_MAX_LEN = flags.DEFINE_integer("max_len", 1024, "cache positions per slot")
_CHUNK = flags.DEFINE_integer("chunk", 64, "prefill chunk")
_THREADS = flags.DEFINE_integer("threads", 2, "native runtime threads")
_ACTS = flags.DEFINE_enum("native_acts", "int8", ["int8", "f32"],
                          "native runtime activations: int8 (fast) or f32 (the accuracy reference)")
_MODEL_ID = flags.DEFINE_string("model_id", "", "model name in the APIs (default: from the source)")
_KEYS = flags.DEFINE_list("api_keys", [], "accepted API keys (empty = no auth)")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 1024, "cap on a request's max_tokens")
_QUEUE = flags.DEFINE_integer("max_queue", 64, "waiting requests before 429")
_FPS = flags.DEFINE_float("video_fps", 1.0, "video frames sampled per second")
_MAX_FRAMES = flags.DEFINE_integer("max_video_frames", 16, "sampled frames per video (more: 400)")
_MAX_AUDIO = flags.DEFINE_float("max_audio_seconds", 30.0, "longest audio part (longer: 400)")
_MAX_MEDIA = flags.DEFINE_integer("max_media", 8, "media parts per request (more: 400)")
_INT4 = flags.DEFINE_bool("int4", False, "jax: quantise the weights to int4 at load "
                          "(gemini.quant.params.quantize_params; dense text decoders) and serve "
                          "them through Int4Weight and the one dense")
_INT4_GROUP = flags.DEFINE_integer("int4_group_size", 32, "--int4: rows per scale (32/64/128)")
_INT4_IMPL = flags.DEFINE_enum("int4_impl", "xla", ["xla", "pallas"],
                               "--int4: dequantise + f32 dot (xla) or the Pallas kernel")
_MESH = flags.DEFINE_string("mesh", "", "jax: a device mesh, e.g. 'tensor=2,expert=4' "
                            "(axes data, fsdp, tensor, expert; product = device count)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "activations/KV (jax)")


def build_backend(m: metrics_lib.Metrics):
  chosen = [f for f in (_CKPT.value, _GGUF.value, _GNB.value) if f]
  if len(chosen) != 1:
    raise SystemExit("give exactly one of --checkpoint=DIR, --gguf=smollm2|PATH, --gnb=FILE")
  native = _BACKEND.value == "native" or (_BACKEND.value == "auto" and bool(_GNB.value))
  if native and not _CKPT.value:
    if _GNB.value:
      path = _GNB.value
      tok = (loading.tokenizer_lib.SentencePieceTokenizer(_TOK.value) if _TOK.value else
             loading.gnb_tokenizer(path))
      name = _MODEL_ID.value or os.path.splitext(os.path.basename(path))[0]
    else:
      path, tok = loading.gguf_tokenizer(_GGUF.value)
      name = _MODEL_ID.value or ("smollm2-135m" if _GGUF.value == "smollm2" else
                                 os.path.splitext(os.path.basename(path))[0])
    ecfg = native_engine.NativeConfig(n_slots=_SLOTS.value, max_len=_MAX_LEN.value,
                                      chunk=_CHUNK.value)
    return backends.NativeBackend(path, threads=_THREADS.value, model_id=name, tokenizer=tok,
                                  ecfg=ecfg, max_queue=_QUEUE.value, metrics=m,
                                  int8_activations=_ACTS.value == "int8")
  if _GNB.value:
    try:
      params, cfg = gnb_params.params_from_gnb(gnb.read(_GNB.value), _DTYPE.value)
    except ValueError as e:
      raise SystemExit(f"--gnb: {e}") from e
    tok = (loading.tokenizer_lib.SentencePieceTokenizer(_TOK.value) if _TOK.value else
           loading.gnb_tokenizer(_GNB.value))
    name = _MODEL_ID.value or os.path.splitext(os.path.basename(_GNB.value))[0]
  elif _GGUF.value:
    params, cfg, tok = loading.load_gguf(_GGUF.value, _DTYPE.value)
    name = _MODEL_ID.value or ("smollm2-135m" if _GGUF.value == "smollm2" else cfg.name)
  else:
    try:
      params, cfg, tok = loading.load_checkpoint(_CKPT.value, _TOK.value, _CONFIG.value,
                                                 dtype=_DTYPE.value)
    except (FileNotFoundError, ValueError) as e:
      raise SystemExit(f"serve: {e}") from None
    name = _MODEL_ID.value or cfg.name
  max_len = min(_MAX_LEN.value, cfg.max_seq_len)
  chunk = min(_CHUNK.value, max_len)
  buckets = tuple(b for b in (8, 16, 32, 64, 128, 256) if b < chunk) + (chunk,)
  if _INT4.value:
    try:
      params = quant_params.quantize_params(params, cfg, group_size=_INT4_GROUP.value)
    except ValueError as e:
      raise SystemExit(f"--int4: {e}") from e
  mesh = None
  if _MESH.value:
    try:
      mesh = sharding.make_mesh(config_flags.parse_mesh(_MESH.value, sharding.MESH_AXES[:4]))
    except ValueError as e:
      raise SystemExit(f"--mesh: {e}") from e
  ecfg = engine.EngineConfig(n_slots=_SLOTS.value, max_len=max_len, chunk=chunk,
                             chunk_buckets=buckets, int4_impl=_INT4_IMPL.value)
  return backends.JaxBackend(params, cfg, tok, ecfg, model_id=name, metrics=m,
                             max_queue=_QUEUE.value, mesh=mesh)


def main(argv):
  del argv
  import uvicorn
  m = metrics_lib.Metrics()
  backend = build_backend(m)
  cfg = app_lib.ServerConfig(model_id=backend.model_id, api_keys=tuple(_KEYS.value),
                             max_tokens=_MAX_TOKENS.value,
                             media=media.MediaLimits(max_items=_MAX_MEDIA.value,
                                                     max_audio_seconds=_MAX_AUDIO.value,
                                                     video_fps=_FPS.value,
                                                     max_video_frames=_MAX_FRAMES.value))
  print(f"serving {backend.model_id} ({type(backend).__name__}) on http://{_HOST.value}:{_PORT.value}",
        flush=True)
  uvicorn.run(app_lib.create_app(backend, cfg, metrics=m), host=_HOST.value, port=_PORT.value,
              log_level="info")
  backend.stop()


if __name__ == "__main__":
  absl_app.run(main)
