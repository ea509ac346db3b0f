"""The framework's floor for bench/http_bench.py: a bare FastAPI endpoint that reads a multipart
upload and decodes each image with pmerge's own decoder (service/engine/images.py), and answers a
constant. No engine, no middleware of pmerge's, no JSON of predictions.

    python bench/bare_endpoint.py PORT IMAGE_SIZE
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import Response  # noqa: E402

from models_store.preprocess import Preprocess  # noqa: E402
from service.engine.images import decode_image  # noqa: E402


def app(image_size: int) -> FastAPI:
    preprocess = Preprocess(image_size=image_size)
    api = FastAPI()

    @api.post("/classify")
    async def classify(request: Request) -> Response:
        form = await request.form()
        for upload in form.getlist("files"):
            decode_image(await upload.read(), preprocess, 10 ** 8)
        return Response(b'{"ok":true}\n', media_type="application/json")

    return api


if __name__ == "__main__":
    uvicorn.run(app(int(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
