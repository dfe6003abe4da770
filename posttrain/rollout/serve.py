"""`posttrain serve`: an OpenAI-compatible chat server for a local Hugging Face causal LM (FastAPI + uvicorn).

    posttrain serve --model PATH [--name ID] [--host 127.0.0.1] [--port 8000] [--max-batch 32]
                    [--batch-wait-ms 5] [--max-tokens 512] [--seed 0] [--device auto]

Endpoints: `GET /v1/models` (one model, its id the folder's name or `--name`), `POST /v1/chat/completions`
and `GET /metrics` (JSON: requests served, batches run, the largest, how many batches had each size).

A request's `messages` (system, user and assistant turns; `content` a string or a list of text parts) go
through the model's chat template as `generate` renders them (`ChatCodec`), and its rows are decoded with
`rollout/decode.py` like every other sample. Honoured: `model` (must be the served id), `messages`,
`temperature` (default 1.0 as OpenAI's; 0 is greedy), `top_p` (default 1.0), `max_tokens` (or
`max_completion_tokens`; default 128, capped by the server's `--max-tokens` and by what fits in the model's
context), `n` (1 to `--max-batch`) and `seed`. Ignored: `stop`, penalties, `logit_bias`, `logprobs`, `user`
and any other field. `stream: true` is refused (400): there is no streaming. A bad request is a 400 with
OpenAI's error object `{"error": {"message", "type": "invalid_request_error", "param", "code"}}`.

**Batching across requests.** One worker thread owns the model. Handlers put a request on a queue; when the
worker finds one waiting it waits `--batch-wait-ms` more (or until `--max-batch` rows wait), takes what fits
in `--max-batch` rows (a request's n choices are n rows), and decodes the rows that share their sampling
settings (temperature and top-p; every greedy row together) in one `decode` call, with `max_new_tokens` the
largest `max_tokens` asked; each row is then cut to its own `max_tokens` (finish_reason "length" when it did
not stop before). That changes nothing: a row's token t is drawn from uniform t of its own seed's stream, so
its first k tokens are those a call with `max_new_tokens=k` makes. Each batch is logged at INFO ("batch of 7
rows from 5 requests") and counted in `/metrics`.

**Seeds.** Choice i of a request with `seed` S is decoded with `row_seed(S, 0, i)`, so its text depends on the
model, the prompt and S only, never on which requests shared its batch (decode's contract). A request without
a seed gets one from the server's random stream (seeded by `--seed`).

`usage.completion_tokens` counts the tokens each choice generated, its stop token included.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import random
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from posttrain.config import check_flags
from posttrain.data.types import ROLES, Message
from posttrain.errors import UserError
from posttrain.rollout.decode import decode
from posttrain.rollout.generate import ChatCodec, row_seed

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128


class BadRequest(Exception):
    """A request the server refuses: HTTP 400 with OpenAI's error object naming `param`."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


@dataclass
class ChatRequest:
    """A checked `/v1/chat/completions` body."""
    messages: list[Message]
    temperature: float
    top_p: float
    max_tokens: int
    n: int
    seed: int | None


def _number(body: dict, key: str, default: float, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool):
        raise BadRequest(f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r}", key)
    return value


def _content(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(f"'{where}.content' must be a string or a list of text parts", f"{where}.content")


def _messages(value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(f"'{where}' must be an object with 'role' and 'content'", where)
        if m.get("role") not in ROLES:
            raise BadRequest(f"'{where}.role' must be one of {', '.join(ROLES)}, got {m.get('role')!r}",
                             f"{where}.role")
        out.append(Message(m["role"], _content(m.get("content"), where)))
    return out


def parse_request(body: Any, name: str, max_tokens_limit: int, max_n: int) -> ChatRequest:
    """Check a chat-completions body; raises `BadRequest` naming the first bad field."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("model") != name:
        raise BadRequest(f"model {body.get('model')!r} is not served here; this server serves {name!r}", "model")
    messages = _messages(body.get("messages"))
    if body.get("stream"):
        raise BadRequest("streaming is not supported; send stream=false", "stream")
    temperature = _number(body, "temperature", 1.0)
    if not temperature >= 0:
        raise BadRequest(f"'temperature' must be >= 0, got {temperature}", "temperature")
    top_p = _number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise BadRequest(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    key = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = _number(body, key, DEFAULT_MAX_TOKENS, integer=True)
    if max_tokens < 1:
        raise BadRequest(f"'{key}' must be >= 1, got {max_tokens}", key)
    n = _number(body, "n", 1, integer=True)
    if not 1 <= n <= max_n:
        raise BadRequest(f"'n' must be between 1 and {max_n} (the server's --max-batch), got {n}", "n")
    seed = body.get("seed")
    if seed is not None:
        seed = _number(body, "seed", 0, integer=True)
    return ChatRequest(messages, float(temperature), float(top_p), min(max_tokens, max_tokens_limit), n, seed)


def error_body(message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


@dataclass
class _Job:
    prompt: list[int]
    request: ChatRequest
    seeds: list[int]
    future: Future


class Batcher:
    """The worker thread that owns the model: requests wait in a queue and are decoded together (module
    docstring). `start` and `stop` run the thread (the app's lifespan calls them); `pause` and `resume` hold
    the worker, so that requests queue up (tests make a batch of a known size that way)."""

    def __init__(self, model, codec: ChatCodec, tokenizer_lock: threading.Lock, max_batch: int = 32,
                 batch_wait_ms: float = 5.0):
        self.model, self.codec, self.tok_lock = model, codec, tokenizer_lock
        self.max_batch, self.wait_s = max_batch, batch_wait_ms / 1000
        self._cond = threading.Condition()
        self._pending: collections.deque[_Job] = collections.deque()
        self._paused = self._stopping = False
        self._thread: threading.Thread | None = None
        self._sizes: collections.Counter[int] = collections.Counter()
        self._served = self._rows = self._tokens = self._rejected = 0

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="posttrain-serve-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the worker after the batch it is decoding; requests still waiting fail."""
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            waiting, self._pending = list(self._pending), collections.deque()
            self._cond.notify_all()
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        if thread is not None:
            thread.join()

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def submit(self, prompt: list[int], request: ChatRequest, seeds: list[int]) -> Future:
        job = _Job(prompt, request, seeds, Future())
        with self._cond:
            if self._stopping or self._thread is None:
                raise RuntimeError("the server's worker is not running")
            self._pending.append(job)
            self._cond.notify_all()
        return job.future

    def rejected(self) -> None:
        with self._cond:
            self._rejected += 1

    def metrics(self) -> dict:
        with self._cond:
            return {"requests": self._served, "rows": self._rows, "batches": sum(self._sizes.values()),
                    "largest_batch": max(self._sizes, default=0),
                    "batch_sizes": {str(k): self._sizes[k] for k in sorted(self._sizes)},
                    "completion_tokens": self._tokens, "rejected": self._rejected,
                    "waiting_requests": len(self._pending), "waiting_rows": sum(j.request.n for j in self._pending)}

    def _take(self) -> list[_Job]:
        """Wait for work, then for the batch window; the jobs that fit in `max_batch` rows ([] when stopping);
        a job whose handler was cancelled meanwhile is dropped."""
        with self._cond:
            while not self._stopping and (self._paused or not self._pending):
                self._cond.wait()
            deadline = time.monotonic() + self.wait_s
            while not self._stopping and sum(j.request.n for j in self._pending) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._stopping:
                return []
            taken: list[_Job] = []
            rows = 0
            while self._pending and (not taken or rows + self._pending[0].request.n <= self.max_batch):
                job = self._pending.popleft()
                if job.future.set_running_or_notify_cancel():   # False: its handler was cancelled, drop it
                    taken.append(job)
                    rows += job.request.n
            return taken

    def _run(self) -> None:
        while not self._stopping:
            jobs = self._take()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:   # greedy ignores top_p: every greedy row decodes together
                r = job.request
                groups.setdefault((r.temperature, r.top_p) if r.temperature > 0 else (0.0, 1.0), []).append(job)
            for (temperature, top_p), group in groups.items():
                self._decode(group, temperature, top_p)

    def _decode(self, jobs: list[_Job], temperature: float, top_p: float) -> None:
        prompts = [job.prompt for job in jobs for _ in range(job.request.n)]
        seeds = [s for job in jobs for s in job.seeds]
        try:
            decoded = decode(self.model, prompts, self.codec.pad_id, self.codec.stop_ids,
                             max(job.request.max_tokens for job in jobs), temperature=temperature, top_p=top_p,
                             seeds=seeds)
        except Exception as e:  # a bug, not input: logged with its traceback and answered as a 500, never hidden
            log.exception("decoding a batch of %d rows failed", len(prompts))
            for job in jobs:
                job.future.set_exception(e)
            return
        log.info("batch of %d rows from %d requests", len(prompts), len(jobs))
        answers, row = [], 0
        with self.tok_lock:
            for job in jobs:
                choices = []
                for d in decoded[row: row + job.request.n]:
                    m = job.request.max_tokens
                    stopped = d.stopped and len(d.tokens) <= m   # a stop after its own budget is not its stop
                    r = self.codec.response(d.tokens[:m], stopped)
                    choices.append({"text": r["text"], "stopped": stopped, "tokens": len(r["token_ids"])})
                answers.append(choices)
                row += job.request.n
        with self._cond:
            self._sizes[len(prompts)] += 1
            self._served += len(jobs)
            self._rows += len(prompts)
            self._tokens += sum(c["tokens"] for choices in answers for c in choices)
        for job, choices in zip(jobs, answers):
            job.future.set_result(choices)


def context_length(model) -> int | None:
    """The longest sequence the model's positions allow (None: no limit in its config)."""
    return getattr(model.config, "max_position_embeddings", None)


def make_app(model, tokenizer, name: str, *, max_batch: int = 32, batch_wait_ms: float = 5.0,
             max_tokens: int = 512, seed: int = 0) -> FastAPI:
    """The FastAPI app serving `model` as `name` (module docstring). Its lifespan starts and stops the worker
    (`app.state.batcher`, a `Batcher`): run it with uvicorn, or enter `fastapi.testclient.TestClient(app)`."""
    model.eval()
    codec = ChatCodec(tokenizer)
    tok_lock = threading.Lock()   # a fast tokenizer is not safe to call from two threads at once
    batcher = Batcher(model, codec, tok_lock, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    rng = random.Random(seed)
    limit = context_length(model)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title=f"posttrain serve: {name}", lifespan=lifespan)
    app.state.batcher = batcher

    def bad(message: str, param: str | None = None) -> JSONResponse:
        batcher.rejected()
        return JSONResponse(error_body(message, param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):   # 404, 405: OpenAI's error shape too
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "posttrain"}]}

    @app.get("/metrics")
    async def metrics():
        return batcher.metrics()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return bad("the request body is not valid JSON")
        try:
            req = parse_request(body, name, max_tokens, max_batch)
            prompt = _prompt_ids(codec, tok_lock, req.messages)
            if limit is not None:
                if len(prompt) >= limit:
                    raise BadRequest(f"the prompt has {len(prompt)} tokens; the model's context is {limit}",
                                     "messages")
                req.max_tokens = min(req.max_tokens, limit - len(prompt))
        except BadRequest as e:
            return bad(e.message, e.param)
        base = req.seed if req.seed is not None else rng.getrandbits(62)
        future = batcher.submit(prompt, req, [row_seed(base, 0, i) for i in range(req.n)])
        choices = await asyncio.wrap_future(future)
        completion = sum(c["tokens"] for c in choices)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]}, "logprobs": None,
                         "finish_reason": "stop" if c["stopped"] else "length"} for i, c in enumerate(choices)],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion,
                      "total_tokens": len(prompt) + completion},
        }

    return app


def _prompt_ids(codec: ChatCodec, lock: threading.Lock, messages: list[Message]) -> list[int]:
    with lock:
        try:
            return codec.prompt_ids(messages)
        except Exception as e:  # a chat template is user code: what it raises is about these messages
            raise BadRequest(f"the chat template rejects these messages: {type(e).__name__}: {e}",
                             "messages") from e


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one. Refused addresses are user errors."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise UserError(f"serve: cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="posttrain serve",
                                description="An OpenAI-compatible chat server (batched across requests).")
    p.add_argument("--model", required=True, help="a local Hugging Face model folder")
    p.add_argument("--name", help="the model id clients ask for (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0: a free port (the URL is printed)")
    p.add_argument("--max-batch", type=int, default=32, help="rows decoded together at most")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--max-tokens", type=int, default=512, help="the most new tokens a request may ask for")
    p.add_argument("--seed", type=int, default=0, help="seeds the seeds of requests that give none")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = p.parse_args(argv)
    check_flags(args, port={"ge": 0, "le": 65535}, max_batch={"ge": 1}, batch_wait_ms={"ge": 0},
                max_tokens={"ge": 1})
    folder = Path(args.model).expanduser()
    if not folder.is_dir():
        raise UserError(f"serve: --model: no such folder '{args.model}'")
    sock = _listen(args.host, args.port)   # a taken or bad address fails before the model loads

    import torch
    import uvicorn

    from posttrain.models.load import load_model, load_tokenizer

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("serve: --device cuda, but torch sees no CUDA device")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    tok = load_tokenizer(str(folder))
    model = load_model(str(folder)).to(device)
    name = args.name or folder.resolve().name
    app = make_app(model, tok, name, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                   max_tokens=args.max_tokens, seed=args.seed)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {name} at http://{host}:{sock.getsockname()[1]}/v1 on {device}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0
