"""LitServe serving one merged checkpoint, for bench/http_bench.py: multipart upload in, top label
per task out, LitServe's own batching across requests (max_batch_size = the benchmark's batch).

    .venv-peers/litserve/bin/python bench/peers/litserve_peer.py PORT CHECKPOINT IMAGE_SIZE MAX_BATCH
"""
from __future__ import annotations

import sys

import litserve as ls
import torch

from common import Tower


class TowerAPI(ls.LitAPI):
    def __init__(self, checkpoint: str, image_size: int, max_batch: int):
        super().__init__(max_batch_size=max_batch, batch_timeout=0.005)
        self.checkpoint, self.image_size = checkpoint, image_size

    def setup(self, device):
        self.model = Tower(self.checkpoint, self.image_size)

    def decode_request(self, request):  # the multipart form, as LitServe reads it
        return self.model.decode([upload.file.read() for upload in request.getlist("files")])

    def batch(self, inputs):  # requests of several images each: one forward of all of them
        self.sizes = [len(x) for x in inputs]
        return torch.cat(inputs)

    def predict(self, pixels):
        return self.model.top1(pixels)

    def unbatch(self, output):
        out, at = [], 0
        for n in self.sizes:
            out.append(output[at:at + n])
            at += n
        return out

    def encode_response(self, output):
        return {"results": output}


if __name__ == "__main__":
    port, checkpoint, image_size, max_batch = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    server = ls.LitServer(TowerAPI(checkpoint, image_size, max_batch), accelerator="cpu", workers_per_device=1,
                          api_path="/classify")
    server.run(port=port, host="127.0.0.1", log_level="warning", generate_client_file=False)
