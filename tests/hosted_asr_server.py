"""A hosted-ASR stand-in for the tests, built on the project's own engine (faster-whisper, shipped tiny.en):
a real HTTP server process speaking the OpenAI-compatible `POST /v1/audio/transcriptions` and
`POST /v1/audio/translations` APIs.

It checks the bearer key, reads the multipart form (file, model, response_format, timestamp_granularities[],
language), decodes the uploaded file with ffmpeg and answers `verbose_json` with words and segments, the
language named as OpenAI names it ("english"). Translations answer as OpenAI's do: English segments (the
engine's translate task; `--model base`, a multilingual model, is needed), no `words`, no `language` field read,
and `"language": "english"` whatever was spoken. For the tests: `POST /_control` `{"status": 503, "times": 2}`
makes the next requests fail with that status; `GET /_requests` lists what was received (bytes, content type,
duration of the audio, form fields).

    python -m tests.hosted_asr_server --port 0 --key KEY [--model base]   (prints "listening on PORT" once ready)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from shared.asr.audio import SAMPLE_RATE_HZ, read_audio
from shared.asr.languages import LANGUAGE_NAMES
from shared.asr.resource import engine_for
from shared.settings import load_settings
from shared.subtitles.words import Word

SEGMENT_PAUSE_SEC = 1.0  # a pause this long between words starts a new segment in the answer


def segments_of(words: list[Word]) -> list[dict[str, Any]]:
    groups: list[list[Word]] = []
    for word in words:
        if groups and word.start - groups[-1][-1].end < SEGMENT_PAUSE_SEC:
            groups[-1].append(word)
        else:
            groups.append([word])
    return [{"id": i, "start": g[0].start, "end": g[-1].end, "text": " ".join(w.word for w in g),
             "avg_logprob": -0.1} for i, g in enumerate(groups)]


class HostedAsrServer:
    def __init__(self, key: str, engine: Any) -> None:
        self.key = key
        self.engine = engine
        self.failures: list[int] = []  # statuses to answer with, one per coming request
        self.received: list[dict[str, Any]] = []

    async def transcriptions(self, request: web.Request) -> web.Response:
        return await self._answer(request, translate=False)

    async def translations(self, request: web.Request) -> web.Response:
        return await self._answer(request, translate=True)

    async def _answer(self, request: web.Request, *, translate: bool) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)
        form: dict[str, list[str]] = {}
        upload: tuple[bytes, str, str] | None = None
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "file":  # type: ignore[union-attr]
                upload = (await part.read(), part.filename or "", part.headers.get("Content-Type", ""))  # type: ignore[union-attr]
            else:
                form.setdefault(part.name or "", []).append(await part.text())  # type: ignore[union-attr]
        seen: dict[str, Any] = {"path": request.path, "form": form, "bytes": len(upload[0]) if upload else 0,
                                "filename": upload[1] if upload else "", "content_type": upload[2] if upload else ""}
        self.received.append(seen)
        if self.failures:
            status = self.failures.pop(0)
            return web.json_response({"error": {"message": "the server is overloaded"}}, status=status)
        if upload is None or form.get("response_format") != ["verbose_json"]:
            return web.json_response({"error": {"message": "file and response_format=verbose_json needed"}},
                                     status=400)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / (upload[1] or "audio")
            path.write_bytes(upload[0])
            audio = await read_audio(str(path), start_sec=0.0, duration_sec=3600.0)
        seen["duration_sec"] = round(len(audio) / SAMPLE_RATE_HZ, 3)
        lang = "auto" if translate else (form.get("language") or ["auto"])[0]  # translations take no language
        transcript = await self.engine.transcribe(audio, lang, translate=translate)
        words = transcript.words
        language = "en" if translate else transcript.language  # OpenAI: "the language of the output translation"
        answer: dict[str, Any] = {
            "task": "translate" if translate else "transcribe", "language": LANGUAGE_NAMES.get(language, language),
            "duration": seen["duration_sec"], "text": " ".join(w.word for w in words),
            "segments": segments_of(words),
        }
        if not translate and "word" in form.get("timestamp_granularities[]", []):
            answer["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in words]
        return web.json_response(answer)

    async def control(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.failures = [int(body["status"])] * int(body.get("times", 1))
        return web.json_response({"failing": len(self.failures)})

    async def requests(self, _: web.Request) -> web.Response:
        return web.json_response(self.received)


async def serve(port: int, key: str, model: str) -> None:
    engine = await asyncio.to_thread(engine_for, load_settings({}, asr_model=model, asr_beam_size=1))
    server = HostedAsrServer(key, engine)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/audio/transcriptions", server.transcriptions)
    app.router.add_post("/v1/audio/translations", server.translations)
    app.router.add_post("/_control", server.control)
    app.router.add_get("/_requests", server.requests)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on {bound}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", default="tiny.en")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.key, args.model))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
