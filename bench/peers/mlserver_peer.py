"""MLServer serving one merged checkpoint, for bench/http_bench.py: a custom runtime whose REST
handler takes the multipart upload (MLServer's own V2 routes take JSON tensors, not files), decodes
it and calls the model's `predict`, so MLServer's adaptive batching joins requests (max_batch_size =
the benchmark's batch, max_batch_time 5 ms); top label per task out.

    .venv-peers/mlserver/bin/python bench/peers/mlserver_peer.py PORT CHECKPOINT IMAGE_SIZE MAX_BATCH
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from fastapi import Request
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.context import model_context
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse

from common import Tower


class TowerRuntime(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self.model = Tower(extra["checkpoint"], int(extra["image_size"]))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        pixels = torch.from_numpy(NumpyCodec.decode_input(payload.inputs[0]))
        best = self.model.top1(pixels)
        tasks = list(best[0]) if best else []
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(t, np.array([b[t] for b in best], dtype=np.int64)) for t in tasks])

    @custom_handler(rest_path="/classify")
    async def classify(self, request: Request) -> dict:
        form = await request.form()
        files = [await upload.read() for upload in form.getlist("files")]
        pixels = await asyncio.to_thread(self.model.decode, files)
        with model_context(self.settings):  # what MLServer's own V2 route sets around `predict`
            answer = await self.predict(InferenceRequest(inputs=[NumpyCodec.encode_input("pixels", pixels.numpy())]))
        return {"results": [{o.name: o.data[i] for o in answer.outputs} for i in range(len(files))]}


if __name__ == "__main__":
    port, checkpoint, image_size, max_batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    folder = Path(tempfile.mkdtemp(prefix="pmerge-mlserver-"))
    (folder / "settings.json").write_text(json.dumps({"http_port": int(port), "grpc_port": int(port) + 1000,
                                                      "metrics_port": int(port) + 2000, "parallel_workers": 0,
                                                      "host": "127.0.0.1", "debug": False}))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "tower", "implementation": "mlserver_peer.TowerRuntime", "max_batch_size": int(max_batch),
        "max_batch_time": 0.005, "parameters": {"extra": {"checkpoint": checkpoint, "image_size": image_size}}}))
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    os.execv(str(Path(sys.executable).with_name("mlserver")), ["mlserver", "start", str(folder)])
