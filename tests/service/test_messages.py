"""The messages between front-end processes and the engine process: one class per request and
answer, every operation handled by the engine, each message unchanged through its JSON, and a header
that is no request answered with a refusal on a connection that goes on serving."""
from __future__ import annotations

import asyncio
import json

import pytest

from service.runtime import ipc
from service.runtime import messages as m
from service.runtime.engine_server import EngineServer
from service.metrics import Metrics
from service.runtime.local import LocalRuntime
from service.settings import Settings

from svc_helpers import FAMILY_ID

EXAMPLES = [
    m.Hold(), m.Hold(FAMILY_ID), m.HoldReply({"family_id": FAMILY_ID}, "abc", True, [{"name": "base.safetensors", "disk_bytes": 9, "resident_bytes": 4}], 1 << 20),
    m.Classify(FAMILY_ID, "abc", "psm_1", [m.ImagePlace(kind="pixels", at=0, n=768, name="a.png", shape=[3, 16, 16]),
                                           m.ImagePlace(kind="jpeg", at=768, n=100, name="b.jpg")],
               [[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], background=True),
    m.ClassifyReply(["digits", "fashion"], [5, 3]),
    m.Checkpoint(FAMILY_ID, "abc", "digits:1,fashion:0,letters:0"),
    m.CheckpointReply(10, '"e"', "f.safetensors", False, path="/tmp/x"), m.CheckpointReply(10, '"e"', "f", True, stream=True),
    m.Chunk(), m.Chunk(end=True), m.Families(), m.FamiliesReply([{"family_id": FAMILY_ID}]), m.Readiness(),
    m.ReadinessReply(False, None, "model is loading"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda x: type(x).__name__)
def test_a_message_is_itself_after_the_wire(message):
    header = json.loads(json.dumps(message.to_wire()))
    again = (m.request_from_wire(header) if isinstance(message, m.Request) else type(message).from_wire(header))
    assert again == message and type(again) is type(message)


def test_every_operation_has_its_request_and_an_engine_handler(store, tmp_path):
    assert set(m.REQUESTS) == set(m.Op)
    server = EngineServer(LocalRuntime(Settings(store=store, device="cpu"), Metrics()), str(tmp_path / "e.sock"))
    assert set(server.handlers) == set(m.Op)


def test_a_bad_header_is_refused_and_the_connection_serves_on(store, tmp_path):
    async def scenario() -> tuple[dict, dict, m.ReadinessReply]:
        runtime = LocalRuntime(Settings(store=store, family=FAMILY_ID, device="cpu"), Metrics())
        server = EngineServer(runtime, str(tmp_path / "engine.sock"))
        await server.start()
        await runtime.start()
        try:
            reader, writer = await asyncio.open_unix_connection(server.path)
            await ipc.send(writer, {"op": "delete-everything"})
            unknown, _ = await ipc.receive(reader)
            await ipc.send(writer, {"op": "checkpoint", "family": FAMILY_ID})  # its digest and preference missing
            partial, _ = await ipc.receive(reader)
            await ipc.send(writer, m.Readiness().to_wire())
            ready, _ = await ipc.receive(reader)
            writer.close()
            return unknown, partial, m.ReadinessReply.from_wire(ready)
        finally:
            await server.close()
            runtime.close()

    unknown, partial, ready = asyncio.run(scenario())
    assert not unknown["ok"] and unknown["status"] == 400 and "unknown operation 'delete-everything'" in unknown["detail"]
    assert not partial["ok"] and partial["status"] == 400 and "checkpoint" in partial["detail"]
    assert ready.ready and ready.family_id == FAMILY_ID
