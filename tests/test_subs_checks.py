"""Subtitle options checked at submit (shared/jobs/jobrules.py check_subtitles, on every way in): `subs.translate`
only with subtitles made, `subs.lang` a Whisper language or auto (a refused one quoted short); and an English clip
"translated" into English on an English-only model is transcribed, not failed (shared/asr/base.py task_for)."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.asr.base import task_for
from shared.errors import ModelCannotTranslate

JOB = {"source": {"type": "url", "url": "https://media.example/talk.mp4"}, "startSec": 1, "endSec": 4}


async def _refusal(client: AsyncTestClient[Any], body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/api/jobs", json=body)
    assert response.status_code == 422, response.text
    return dict(response.json()["error"])


@pytest.mark.parametrize("subs", [{"translate": "en"}, {"enabled": False, "translate": "en", "lang": "es"}])
async def test_translate_without_subtitles_is_refused(client: AsyncTestClient[Any], subs: dict[str, Any]) -> None:
    error = await _refusal(client, {**JOB, "subs": subs})
    assert (error["code"], error["field"]) == ("translate_needs_subtitles", "subs.translate")
    assert "subs.enabled" in error["message"]


@pytest.mark.parametrize("lang", ["tlh", "english", "", "x" * 5000])
async def test_an_unknown_lang_is_refused_at_submit_and_quoted_short(client: AsyncTestClient[Any], lang: str) -> None:
    error = await _refusal(client, {**JOB, "subs": {"enabled": True, "lang": lang}})
    assert (error["code"], error["field"]) == ("language_unknown", "subs.lang")
    assert len(error["message"]) < 160 and "x" * 21 not in error["message"]


async def test_a_batch_clip_names_its_unknown_lang(client: AsyncTestClient[Any]) -> None:
    body = {"source": JOB["source"], "clips": [
        {"startSec": 1, "endSec": 2}, {"startSec": 2, "endSec": 3, "subs": {"enabled": True, "lang": "tlh"}}]}
    error = await _refusal(client, body)
    assert (error["code"], error["field"]) == ("language_unknown", "clips[1].subs.lang")


@pytest.mark.parametrize("subs", [
    {"enabled": True, "lang": "auto"}, {"enabled": True, "lang": "EN"}, {"enabled": True, "lang": "yue"},
    {"enabled": True, "translate": "en", "lang": "de"}, {"burnIn": True, "translate": "en"}, {"lang": "fr"},
])
async def test_known_languages_and_translations_with_subtitles_are_accepted(
    client: AsyncTestClient[Any], subs: dict[str, Any]
) -> None:
    response = await client.post("/api/jobs", json={**JOB, "subs": subs})
    assert response.status_code == 202, response.text


def test_english_into_english_on_an_english_only_model_is_a_transcription() -> None:
    assert task_for(True, False, "tiny.en", "en") == "transcribe"
    assert task_for(True, False, "tiny.en", " EN ") == "transcribe"
    assert task_for(True, True, "base", "en") == "translate"  # a multilingual model translates as asked
    assert task_for(False, False, "tiny.en", "auto") == "transcribe"
    for lang in ("auto", "es"):
        with pytest.raises(ModelCannotTranslate):
            task_for(True, False, "tiny.en", lang)
