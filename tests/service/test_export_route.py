"""`GET /v1/jobs/{id}/export`: the zip holds exactly the files `nograd.export` builds from the job's prompt file
(what `nograd export` writes); refusals name the field; another tenant's job is a 404."""

from __future__ import annotations

import io
import json
import zipfile

from apiclient import Api
from test_api import make_api

from nograd.export import export_files

BBT = {"method": "bbt", "task": "trec", "model": "fake", "budget": 20, "options": {"popsize": 5, "dim": 4}}


def _unzip(response) -> dict[str, bytes]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_export_route(tmp_path):
    client, _ = make_api(tmp_path)
    with client:
        store = client.app.state.store
        api = Api(client, {"alice": store.create_key("alice"), "bob": store.create_key("bob")})
        bbt = api.wait(api.submit(**BBT)["id"])
        manual = api.wait(api.submit(method="manual", task="trec", model="fake")["id"])
        assert bbt["status"] == manual["status"] == "succeeded"
        prompt = api("GET", f"/v1/jobs/{bbt['id']}/prompt").content

        peft = _unzip(api("GET", f"/v1/jobs/{bbt['id']}/export", params={"format": "peft"}))
        assert peft == export_files(prompt, "peft")
        assert json.loads(peft["adapter_config.json"])["peft_type"] == "PROMPT_TUNING"
        native = _unzip(api("GET", f"/v1/jobs/{bbt['id']}/export", params={"format": "native"}))
        assert native == {"prompt.safetensors": prompt}
        text = _unzip(api("GET", f"/v1/jobs/{manual['id']}/export", params={"format": "text"}))
        assert text["prompt.txt"].decode().startswith("Question: {text}")

        refused = api("GET", f"/v1/jobs/{bbt['id']}/export", params={"format": "text"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "format"]
        assert "peft or native" in refused.text
        unknown = api("GET", f"/v1/jobs/{bbt['id']}/export", params={"format": "onnx"})
        assert unknown.status_code == 422 and "format" in unknown.text
        assert api("GET", f"/v1/jobs/{bbt['id']}/export", tenant="bob", params={"format": "peft"}).status_code == 404

        queued = api.submit(**{**BBT, "budget": 100000})
        early = api("GET", f"/v1/jobs/{queued['id']}/export", params={"format": "native"})
        assert early.status_code == 409 and "once it succeeded" in early.text
        api("POST", f"/v1/jobs/{queued['id']}/cancel")
