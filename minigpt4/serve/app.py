"""The FastAPI app: OpenAI-compatible `/v1/chat/completions` (plain and SSE streaming),
`/v1/models`, `/health`, and the web chat page at `/`.

Handlers only validate and translate; the model runs on the `Batcher` thread (continuous batching). Every refusal is
an OpenAI-style error JSON (see errors.py) and nothing a client sends can stop the server."""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from minigpt4.config import GenerationConfig
from minigpt4.serve.config import ServeConfig
from minigpt4.serve.errors import APIError, error_body, install_handlers, validation_error
from minigpt4.serve.images import ImageLimits, RemoteFetcher, load_image_url
from minigpt4.serve.scheduler import Batcher, Job, QueueFull
from minigpt4.serve.schemas import ChatCompletionRequest, ChatMessage

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


# --- presets -------------------------------------------------------------------------------
def load_presets() -> dict[str, Any]:
    """Task presets of the chat package (describe, website, ...), by name."""
    try:
        from minigpt4.chat import presets as P
    except ImportError:
        return {}
    names = getattr(P, "PRESETS", None)
    names = list(names) if names is not None else []
    return {n: P.get_preset(n) for n in names}


def preset_overrides(preset) -> dict[str, Any]:
    """The GenerationConfig fields a preset changes, whatever the preset calls that mapping."""
    for attr in ("generation", "gen", "overrides", "generation_overrides"):
        val = getattr(preset, attr, None)
        if isinstance(val, dict):
            return dict(val)
        if isinstance(val, GenerationConfig):
            return dataclasses.asdict(val)
    return {}


def preset_info(name: str, preset) -> dict[str, Any]:
    return {"name": name, "prompt": getattr(preset, "prompt", ""), "help": getattr(preset, "help", ""),
            "needs_question": bool(getattr(preset, "needs_question", False)),
            "generation": preset_overrides(preset)}


# --- the served model --------------------------------------------------------------------
@dataclasses.dataclass
class Prepared:
    """A validated request, translated into what the engine takes."""
    body: ChatCompletionRequest
    model_id: str
    messages: list            # minigpt4.chat.templates.Message
    system: str | None
    gen: GenerationConfig
    preset: Any               # TaskPreset or None


class Service:
    """Everything a request needs: engine, batcher, limits, presets."""

    def __init__(self, engine, cfg: ServeConfig, presets: dict[str, Any] | None = None):
        self.engine, self.cfg = engine, cfg
        self.model = engine.model
        mcfg = getattr(self.model, "cfg", None)
        self.ground = bool(getattr(mcfg, "word_ground", False) if cfg.ground is None else cfg.ground)
        self.presets = load_presets() if presets is None else presets
        self.limits = ImageLimits(cfg.max_image_bytes, cfg.max_image_pixels)
        self.fetcher = (RemoteFetcher(self.limits, cfg.remote_timeout_s, cfg.remote_max_redirects)
                        if cfg.allow_remote_images else None)
        self.batcher = Batcher(engine, cfg.max_batch_size, cfg.batch_wait_ms, cfg.max_queue)
        self.started = int(time.time())

    # model ids: "<name>" and "<name>:<preset>"
    def model_ids(self) -> list[str]:
        return [self.cfg.model_name] + [f"{self.cfg.model_name}:{p}" for p in self.presets]

    def resolve_model(self, body: ChatCompletionRequest) -> tuple[str | None, Any]:
        name, _, suffix = body.model.partition(":")
        if name != self.cfg.model_name or (suffix and suffix not in self.presets):
            raise APIError(404, f"model '{body.model}' does not exist; this server serves "
                                f"{', '.join(repr(m) for m in self.model_ids())} (GET /v1/models)",
                           "model_not_found", "model")
        preset_name = body.preset or suffix or None
        if body.preset and suffix and body.preset != suffix:
            raise APIError(400, f"model names preset '{suffix}' but the 'preset' field says "
                                f"'{body.preset}'; give one of them", "conflicting_preset", "preset")
        if preset_name is not None and preset_name not in self.presets:
            raise APIError(400, f"unknown preset '{preset_name}'; choose one of: {', '.join(self.presets)}",
                           "unknown_preset", "preset")
        return preset_name, (self.presets[preset_name] if preset_name else None)

    # --- translation ---------------------------------------------------------------------
    def count_images(self, messages: list[ChatMessage]) -> int:
        return sum(1 for m in messages if isinstance(m.content, list)
                   for p in m.content if p.type == "image_url")

    def to_engine_messages(self, messages: list[ChatMessage]) -> tuple[str | None, list]:
        """OpenAI messages -> (system text, [Message]); images decoded here (blocking: run in a thread).
        Consecutive messages of one role are merged so the template alternates user/assistant."""
        from minigpt4.chat.templates import Message
        system_parts, out = [], []
        for i, m in enumerate(messages):
            texts, images = [], []
            if isinstance(m.content, str):
                texts.append(m.content)
            elif m.content is not None:
                for j, part in enumerate(m.content):
                    if part.type == "text":
                        texts.append(part.text)
                    else:
                        if m.role != "user":
                            raise APIError(400, f"messages.{i}.content.{j}: only user messages may hold "
                                                f"images (this one is '{m.role}')", "invalid_role",
                                           f"messages.{i}.role")
                        images.append(load_image_url(part.image_url.url, self.limits, self.fetcher,
                                                     f"messages.{i}.content.{j}.image_url"))
            text = "\n".join(t for t in texts if t)
            if m.role in ("system", "developer"):
                if out:
                    raise APIError(400, f"messages.{i}: a system message must come before the conversation",
                                   "invalid_role", f"messages.{i}.role")
                system_parts.append(text)
                continue
            if out and out[-1].role == m.role:
                out[-1].text = "\n".join(t for t in (out[-1].text, text) if t)
                out[-1].images.extend(images)
            else:
                out.append(Message(m.role, text, images=images))
        if not out or out[-1].role != "user":
            raise APIError(400, "the last message must have role 'user' (the model answers it)",
                           "invalid_role", "messages")
        if out[0].role != "user":
            raise APIError(400, "the conversation must start with a user message (after any system message)",
                           "invalid_role", "messages")
        return ("\n".join(system_parts) if system_parts else None), out

    def generation(self, body: ChatCompletionRequest, preset) -> GenerationConfig:
        gen = dataclasses.replace(self.model.cfg.generation)
        for k, v in (preset_overrides(preset) if preset is not None else {}).items():
            if hasattr(gen, k):
                setattr(gen, k, v)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is not None:
            gen.max_new_tokens = max_tokens
        if body.temperature is not None:
            gen.temperature = body.temperature
            gen.do_sample = body.temperature > 0  # OpenAI: temperature 0 = deterministic
        if body.top_p is not None:
            gen.top_p = body.top_p
        if body.top_k is not None:
            gen.top_k = body.top_k
        if body.repetition_penalty is not None:
            gen.repetition_penalty = body.repetition_penalty
        if body.seed is not None:
            gen.seed = body.seed
        stops = body.stop_list()
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop: give at most 4 non-empty strings", "invalid_value", "stop")
        gen.stop = tuple(gen.stop) + tuple(stops)
        return gen

    def check_context(self, messages: list, gen: GenerationConfig, system: str | None) -> int:
        """400 unless the shortest prompt the engine can make fits with max_new_tokens. The engine
        drops the oldest turns of a long conversation by itself, but keeps the system message, the
        latest question and every image: those must fit. Returns that minimal prompt length."""
        from minigpt4.chat.templates import Message, encode_conversation
        system = self.engine.system if system is None else system
        images = [im for m in messages for im in m.images]
        latest = Message("user", messages[-1].text, images=images)
        ids, _ = encode_conversation(self.model.tokenizer, self.engine.template, [latest],
                                     self.model.cfg.num_image_tokens, system=system)
        limit = self.engine.max_context
        if len(ids) + gen.max_new_tokens > limit:
            raise APIError(400, f"this model's context is {limit} tokens; the system message, the latest "
                                f"question and {len(images)} image(s) take {len(ids)} and the answer needs "
                                f"{gen.max_new_tokens} more (max_tokens) - shorten the message, send fewer images or lower "
                                f"max_tokens", "context_length_exceeded", "messages")
        return len(ids)

    def prepare(self, raw: bytes) -> Prepared:
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON ({e}); send a JSON object with "
                                f"'model' and 'messages'", "invalid_json") from None
        if not isinstance(obj, dict):
            raise APIError(400, f"request body must be a JSON object, not {type(obj).__name__}", "invalid_json")
        try:
            body = ChatCompletionRequest.model_validate(obj)
        except ValidationError as e:
            raise validation_error(e) from None
        if body.n > self.cfg.max_n:
            raise APIError(400, f"n={body.n} is over this server's limit of {self.cfg.max_n}", "invalid_value", "n")
        preset_name, preset = self.resolve_model(body)
        n_images = self.count_images(body.messages)
        if n_images > self.cfg.max_images:
            raise APIError(400, f"the request holds {n_images} images, over the limit of {self.cfg.max_images}; "
                                f"send fewer (or start the server with a larger --max-images)",
                           "too_many_images", "messages")
        system, messages = self.to_engine_messages(body.messages)
        if preset is not None:
            apply_preset_prompt(messages[-1], preset)
        if not messages[-1].text and not messages[-1].images:
            raise APIError(400, "the last user message is empty; ask something or attach an image",
                           "invalid_value", "messages")
        gen = self.generation(body, preset)
        explicit = (body.max_completion_tokens or body.max_tokens) is not None
        if not explicit:  # a default answer length must not push the question out of the context
            needed = self.check_context(messages, dataclasses.replace(gen, max_new_tokens=1), system)
            gen.max_new_tokens = max(1, min(gen.max_new_tokens, self.engine.max_context - needed))
        self.check_context(messages, gen, system)
        return Prepared(body, body.model, messages, system, gen, preset)

    def engine_requests(self, p: Prepared) -> list:
        from minigpt4.chat.engine import Request
        out = []
        for i in range(p.body.n):
            gen = dataclasses.replace(p.gen)
            if gen.seed is not None:
                gen.seed = gen.seed + i  # n choices differ, yet the same seed repeats them
            kwargs = {"messages": p.messages, "gen": gen,
                      "ground": self.ground and (p.preset is None or getattr(p.preset, "groundable", False))}
            if p.system is not None:
                kwargs["system"] = p.system
            out.append(Request(**kwargs))
        return out


def apply_preset_prompt(message, preset) -> None:
    """The preset's instruction becomes the question: `ask` fills in the user's text, the others
    lead with their instruction and keep any extra words of the user after it."""
    if getattr(preset, "needs_question", False):
        try:
            message.text = preset.build_prompt(message.text)
        except ValueError:
            raise APIError(400, f"preset '{preset.name}' needs a question: write it in the last user message",
                           "invalid_value", "messages") from None
        return
    prompt = getattr(preset, "prompt", "") or ""
    message.text = prompt if not message.text.strip() else f"{prompt}\n{message.text.strip()}"


def postprocess(preset, text: str) -> str:
    """The task's own clean-up (alt text shortened, website -> full HTML document); plain replies only:
    streamed text cannot be taken back, so streams carry the raw answer."""
    fn = getattr(preset, "postprocess", None) if preset is not None else None
    return fn(text) if fn is not None else text


# --- responses -----------------------------------------------------------------------------
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(results) -> dict[str, int]:
    prompt_tokens = int(results[0].prompt_tokens) if results else 0  # the n choices share one prompt
    completion = sum(int(r.completion_tokens) for r in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


def sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def engine_error(e: BaseException) -> APIError:
    from minigpt4.data.image import ImageError
    if isinstance(e, APIError):
        return e
    if isinstance(e, (ValueError, ImageError)):
        return APIError(400, str(e), "invalid_request")
    return APIError(500, f"generation failed: {type(e).__name__}: {e}", "generation_failed")


# --- the app -------------------------------------------------------------------------------
def create_app(engine, cfg: ServeConfig | None = None, presets: dict[str, Any] | None = None) -> FastAPI:
    cfg = cfg or ServeConfig()
    svc = Service(engine, cfg, presets)

    @asynccontextmanager
    async def lifespan(_app):
        svc.batcher.start()
        yield
        svc.batcher.stop()

    app = FastAPI(title="MiniGPT-4", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = svc
    install_handlers(app)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])

    if cfg.api_key:
        app.add_middleware(_APIKeyAuth, key=cfg.api_key)

    @app.get("/health")
    async def health():
        s = svc.batcher.stats
        return {"status": "ok", "model": cfg.model_name, "queued": svc.batcher.queued(),
                "busy": svc.batcher.busy, "batches": s.batches, "requests": s.requests,
                "max_batch": s.max_batch, "steps": s.steps, "rows": s.rows, "mean_batch": round(s.mean_batch(), 2),
                "rejected": s.rejected, "busy_s": round(s.busy_s, 3)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(m, svc.started) for m in svc.model_ids()]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        if model_id not in svc.model_ids():
            raise APIError(404, f"model '{model_id}' does not exist; see GET /v1/models", "model_not_found", "model")
        return _model_card(model_id, svc.started)

    @app.get("/v1/presets")
    async def presets_list():
        return {"object": "list", "data": [preset_info(n, p) for n, p in svc.presets.items()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        declared = int(request.headers.get("content-length") or 0)
        if declared > cfg.body_limit():
            raise APIError(413, f"request body is {declared} bytes, over the limit of {cfg.body_limit()}; "
                                f"send smaller or fewer images", "request_too_large")
        raw = await request.body()
        if len(raw) > cfg.body_limit():
            raise APIError(413, f"request body is {len(raw)} bytes, over the limit of {cfg.body_limit()}",
                           "request_too_large")
        prepared = await run_in_threadpool(svc.prepare, raw)  # image decoding / fetching blocks
        loop = asyncio.get_running_loop()
        stream = prepared.body.stream
        deltas: asyncio.Queue | None = asyncio.Queue() if stream else None
        jobs = [Job(req, loop, loop.create_future(), deltas, index=i)
                for i, req in enumerate(svc.engine_requests(prepared))]
        try:
            svc.batcher.submit(jobs)
        except QueueFull as e:
            raise APIError(429, f"server is busy: {e}; retry shortly", "queue_full",
                           headers={"Retry-After": "1"}) from None
        deadline = loop.time() + cfg.request_timeout_s
        if stream:
            return StreamingResponse(_stream(prepared, jobs, deltas, deadline, cfg), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            results = await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)),
                                             timeout=max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            _cancel(jobs)
            raise APIError(504, f"the request took longer than {cfg.request_timeout_s:g} s (server timeout); "
                                f"lower max_tokens or retry when the server is less busy", "timeout") from None
        except Exception as e:
            _cancel(jobs)
            raise engine_error(e) from None
        return JSONResponse({
            "id": completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": prepared.model_id, "system_fingerprint": None,
            "choices": [{"index": i, "message": {"role": "assistant", "content": postprocess(prepared.preset, r.text)},
                         "logprobs": None, "finish_reason": r.finish_reason} for i, r in enumerate(results)],
            "usage": usage(results)})

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class _APIKeyAuth:
    """401 on /v1 without the right `Authorization: Bearer <key>` (preflight OPTIONS passes, for
    CORS). Plain ASGI, not `@app.middleware("http")`: that one routes every streamed chunk through
    an extra task and memory stream, which cost the event loop more than the SSE writing itself."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1") and scope["method"] != "OPTIONS":
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.key):
                what = "is missing" if not header else "is wrong"
                response = APIError(401, f"API key {what}; send 'Authorization: Bearer <key>' with the key the "
                                         f"server was started with", "invalid_api_key",
                                    headers={"WWW-Authenticate": "Bearer"}).response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "minigpt4"}


def _cancel(jobs: list[Job]) -> None:
    for j in jobs:
        j.cancelled = True


async def _stream(p: Prepared, jobs: list[Job], deltas: asyncio.Queue, deadline: float, cfg: ServeConfig):
    """SSE in OpenAI's chunk format: a role chunk per choice, content deltas, a finish chunk per
    choice, an optional usage chunk, then `data: [DONE]`."""
    loop = asyncio.get_running_loop()
    cid, created = completion_id(), int(time.time())

    def chunk(choices: list[dict], **extra) -> bytes:
        return sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": p.model_id,
                    "system_fingerprint": None, "choices": choices, **extra})

    try:
        for j in jobs:
            yield chunk([{"index": j.index, "delta": {"role": "assistant", "content": ""},
                          "logprobs": None, "finish_reason": None}])
        pending, results = {j.index for j in jobs}, {}
        while pending:
            try:
                items = [await asyncio.wait_for(deltas.get(), timeout=max(0.0, deadline - loop.time()))]
            except asyncio.TimeoutError:
                yield sse(error_body(504, f"the request took longer than {cfg.request_timeout_s:g} s "
                                          f"(server timeout)", "timeout"))
                return
            while not deltas.empty():  # what else has arrived goes out in the same write
                items.append(deltas.get_nowait())
            out = []
            for index, text in _merged(items):
                if text is not None:
                    out.append(chunk([{"index": index, "delta": {"content": text}, "logprobs": None,
                                       "finish_reason": None}]))
                    continue
                pending.discard(index)
                try:
                    res = jobs[index].future.result()
                except Exception as e:
                    out.append(sse(engine_error(e).body()))
                    yield b"".join(out)
                    return
                results[index] = res
                out.append(chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": res.finish_reason}]))
            yield b"".join(out)
        opts = p.body.stream_options
        if opts is not None and opts.include_usage:
            yield chunk([], usage=usage([results[i] for i in sorted(results)]))
        yield sse("[DONE]")
    finally:
        _cancel(jobs)  # the client left: jobs that have not started yet are skipped


def _merged(items: list[tuple[int, str | None]]) -> list[tuple[int, str | None]]:
    """Consecutive text deltas of one choice become one (fewer SSE chunks, same text, same order)."""
    out: list[tuple[int, str | None]] = []
    for index, text in items:
        if text is not None and out and out[-1][0] == index and out[-1][1] is not None:
            out[-1] = (index, out[-1][1] + text)
        else:
            out.append((index, text))
    return out
