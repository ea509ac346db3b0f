"""The Open Inference Protocol ("v2": Triton, KServe, MLServer) for a family: its tensors, the JSON
and binary-data forms of an inference request, and the answer. Plain numpy (a front-end process
parses too); the routes are in routers/v2.py.

A family is a model with two inputs and one output per task:
    IMAGE       BYTES [N]        each element an encoded image file (JSON: base64 text)
    PREFERENCE  FP32/FP64 [N, K] (or [1, K] for every image), in the family's task order
    <task>      FP32 [N, C_task] the probabilities of that task's classes
"""
from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from models_store.preference import PreferenceError, from_weights

from service.http.classify import softmax

IMAGE, PREFERENCE = "IMAGE", "PREFERENCE"
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor data extension's header
FLOATS: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}


class ProtocolError(ValueError):
    """A request the protocol cannot take: 400 with this message."""


@dataclass
class InferRequest:
    images: list[bytes]
    preferences: np.ndarray  # [N, K] float32, each row on the simplex as the API's parser makes it
    outputs: list[str]  # the tasks asked for, in order (all when the request names none)
    binary: dict[str, bool] = field(default_factory=dict)  # output -> answer it as binary data
    id: Optional[str] = None


def model_metadata(name: str, tasks: Sequence[str], classes: dict[str, list[str]]) -> dict[str, Any]:
    return {"name": name, "versions": [], "platform": "pmerge",
            "inputs": [{"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
                       {"name": PREFERENCE, "datatype": "FP32", "shape": [-1, len(tasks)]}],
            "outputs": [{"name": t, "datatype": "FP32", "shape": [-1, len(classes[t])]} for t in tasks]}


def split_body(body: bytes, header_length: Optional[str]) -> tuple[dict, bytes]:
    """The JSON header and the binary data after it (none without the extension's header)."""
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < size <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {size} is outside the body's {len(body)} bytes")
    try:
        header = json.loads(body[:size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"the inference request is not JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("the inference request nests its JSON too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("the inference request must be a JSON object")
    return header, body[size:]


def json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def parameters_of(obj: dict, where: str) -> dict:
    """The `parameters` of the request, an input or an output: a JSON object, or absent."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: `parameters` must be a JSON object, got {json_type(params)}")
    return params


def flag(params: dict, name: str, where: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}: parameter {name} must be true or false, got {json_type(value)}")
    return value


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is no 1 here


def numbers(data: Any, where: str) -> list[float]:
    """The numbers of a tensor's JSON data, flat or nested row-major; anything but a number (a string,
    a boolean, null) is refused by name."""
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: JSON data must be a list of numbers, got {json_type(data)}")
    out: list[float] = []
    stack = [iter(data)]  # no recursion: a deeply nested list is no stack overflow
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise ProtocolError(f"{where}: JSON data must hold numbers only, got {json_type(x)} ({x!r:.40})")
            out.append(float(x))
        else:
            stack.pop()
    return out


class BinaryData:
    """The inputs' binary data, taken in the order the inputs are listed."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, name: str, size: Any) -> bytes:
        if not is_integer(size) or size < 0 or self.at + size > len(self.data):
            raise ProtocolError(f"input {name}: binary_data_size {size!r} does not fit the {len(self.data)} bytes of "
                                f"binary data after the JSON")
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return chunk


def shape_of(tensor: dict) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(is_integer(d) and d >= 0 for d in shape):
        raise ProtocolError(f"input {tensor.get('name')}: shape must be a list of non-negative integers, got {shape!r}")
    return shape


def image_elements(tensor: dict, binary: Optional[bytes], max_images: int) -> list[bytes]:
    if tensor.get("datatype") != "BYTES":
        raise ProtocolError(f"input {IMAGE} must have datatype BYTES, got {tensor.get('datatype')!r}")
    shape = shape_of(tensor)
    if len(shape) != 1:
        raise ProtocolError(f"input {IMAGE} must have shape [N], got {shape}")
    n = shape[0]
    if n == 0:
        raise ProtocolError(f"input {IMAGE} has no image")
    if n > max_images:
        raise ProtocolError(f"input {IMAGE} has {n} images; this server takes at most {max_images} per request")
    if binary is not None:
        out, at = [], 0
        for i in range(n):  # each element: its length (uint32, little-endian), then its bytes
            if at + 4 > len(binary):
                raise ProtocolError(f"input {IMAGE}: binary data ends before element {i}")
            (size,) = struct.unpack_from("<I", binary, at)
            if at + 4 + size > len(binary):
                raise ProtocolError(f"input {IMAGE}: element {i} claims {size} bytes beyond the binary data")
            out.append(binary[at + 4:at + 4 + size])
            at += 4 + size
        if at != len(binary):
            raise ProtocolError(f"input {IMAGE}: {len(binary) - at} bytes of binary data after its {n} elements")
        return out
    data = tensor.get("data")
    if not isinstance(data, list) or len(data) != n or not all(isinstance(x, str) for x in data):
        raise ProtocolError(f"input {IMAGE}: JSON data must be a list of {n} base64 strings (or send binary data)")
    try:
        return [base64.b64decode(x, validate=True) for x in data]
    except (binascii.Error, ValueError):
        raise ProtocolError(f"input {IMAGE}: JSON data must be base64 text, one image file per element") from None


def preference_rows(tensor: dict, binary: Optional[bytes], n: int, tasks: Sequence[str]) -> np.ndarray:
    datatype = tensor.get("datatype")
    if datatype not in FLOATS:
        raise ProtocolError(f"input {PREFERENCE} must have datatype FP32 or FP64, got {datatype!r}")
    shape = shape_of(tensor)
    k = len(tasks)
    if len(shape) != 2 or shape[1] != k or shape[0] not in (1, n):
        raise ProtocolError(f"input {PREFERENCE} must have shape [{n}, {k}] or [1, {k}] (one weight per task: "
                            f"{', '.join(tasks)}), got {shape}")
    count = shape[0] * k
    if binary is not None:
        if len(binary) != count * FLOATS[datatype].itemsize:
            raise ProtocolError(f"input {PREFERENCE}: {len(binary)} bytes of binary data for {count} {datatype} values")
        values = np.frombuffer(binary, dtype=FLOATS[datatype]).astype(np.float64)
    else:
        values = np.asarray(numbers(tensor.get("data"), f"input {PREFERENCE}"), dtype=np.float64)
        if values.size != count:
            raise ProtocolError(f"input {PREFERENCE}: JSON data has {values.size} numbers, its shape {shape} needs {count}")
    rows = []
    for i, row in enumerate(values.reshape(shape[0], k)):
        try:  # the API's parser: normalised, and refused as /classify refuses a preference
            rows.append(from_weights([float(v) for v in row], tasks).weights)
        except PreferenceError as e:
            raise ProtocolError(f"input {PREFERENCE}, row {i}: {e}") from None
    return np.broadcast_to(np.asarray(rows, dtype=np.float32), (n, k)).copy()


def parse_infer(body: bytes, header_length: Optional[str], tasks: Sequence[str], max_images: int) -> InferRequest:
    header, data = split_body(body, header_length)
    binary_default = flag(parameters_of(header, "the inference request"), "binary_data_output",
                          "the inference request", False)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"the inference request's `id` must be a string, got {json_type(request_id)}")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise ProtocolError("the inference request needs `inputs`, a list of tensors")
    names = [t.get("name") for t in inputs]
    unknown = [n for n in names if n not in (IMAGE, PREFERENCE)]
    if unknown:
        raise ProtocolError(f"unknown input {unknown[0]!r}; this model's inputs are {IMAGE} and {PREFERENCE}")
    for required in (IMAGE, PREFERENCE):
        if names.count(required) != 1:
            raise ProtocolError(f"the inference request needs exactly one input {required}, got {names.count(required)}")
    binary = BinaryData(data)
    chunks = {}
    for tensor in inputs:  # binary data comes in the order the inputs are listed
        size = parameters_of(tensor, f"input {tensor['name']}").get("binary_data_size")
        chunks[tensor["name"]] = None if size is None else binary.take(tensor["name"], size)
    if binary.at != len(data):
        raise ProtocolError(f"{len(data) - binary.at} bytes of binary data that no input claims")
    tensors = {t["name"]: t for t in inputs}
    images = image_elements(tensors[IMAGE], chunks[IMAGE], max_images)
    prefs = preference_rows(tensors[PREFERENCE], chunks[PREFERENCE], len(images), tasks)
    asked = header.get("outputs")
    if asked is None:
        outputs, binary_out = list(tasks), {t: binary_default for t in tasks}
    else:
        if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
            raise ProtocolError("`outputs` must be a list of {\"name\": ...}")
        outputs = [o["name"] for o in asked]
        unknown = [o for o in outputs if o not in tasks]
        if unknown:
            raise ProtocolError(f"unknown output {unknown[0]!r}; this model's outputs are its tasks: {', '.join(tasks)}")
        binary_out = {o["name"]: flag(parameters_of(o, f"output {o['name']}"), "binary_data", f"output {o['name']}",
                                      binary_default) for o in asked}
    return InferRequest(images, prefs, outputs, binary_out, request_id)


def infer_response(model: str, request: InferRequest, logits: dict[str, np.ndarray]) -> tuple[bytes, Optional[int]]:
    """The answer's body and, when some output is binary, the length of its JSON header."""
    outputs, blobs = [], []
    for name in request.outputs:
        probs = softmax(logits[name]).astype(np.float32)
        tensor: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(probs.shape)}
        if request.binary.get(name):
            blob = probs.astype("<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = [float(x) for x in probs.reshape(-1)]
        outputs.append(tensor)
    answer: dict[str, Any] = {"model_name": model, "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer, separators=(",", ":")).encode()
    return (header + b"".join(blobs), len(header)) if blobs else (header, None)
