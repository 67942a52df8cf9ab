"""The fleet's wire schema, version PROTO.

Every message is a ZeroMQ multipart message: one header frame, a JSON object of at most
MAX_HEADER bytes with `proto` and `type`, then the array frames its type names, raw
little-endian, their shapes given by the header. A peer speaking another `proto` is told
so in one error message naming both versions; nothing is guessed.

    agent -> server   score    {seq, model, rows, span, role, version}
                               tokens uint16 [rows, span], valid int16 [rows],
                               starts int64 [rows]
    server -> agent   scores   {seq, model, rows, worker, infer_ms}   scores float32 [rows]
                      error    {seq, code, reason}
    server PUB        event    {kind, server, version, models, time}  (topic b"fleet")
                               kind "model" adds {role, model, sha256}: a role's new model
    agent -> server   baseline {seq, role, version, part, parts, bytes, sha256}
                               data uint8 [bytes]: part of the agent's baseline recording
    server -> agent   stored   {seq, part, parts, complete}
    agent -> server   fetch    {seq, role, version, have}: the role's model, unless `have`
    server -> agent   bundle   {seq, role, model, sha256, names, sizes}
                               one uint8 frame per file of the bundle, in `names` order;
                               sha256 is the manifest's (which lists every file's)

On the broker's backend (its workers, local on ipc:// or remote on tcp:// with CurveZMQ),
a score request travels as [agent id, *score] and its reply as [agent id, *scores or
error]; the broker and a worker speak to each other in frames [b"", *message]:

    worker -> broker  ready    {version, name, index, device, models}: at start and every
                               READY_S (a heartbeat); models: the model ids it holds
    broker -> worker  models   {models: [[model id, sha256], ...]}: what the server holds,
                               sent to a remote worker lacking some (it fetches them)
    worker -> broker  want     {seq, model, version}
    broker -> worker  bundle   as above (role: the bundle's folder name, or "-")

`seq` increases with every request of an agent: a reply to an older request (one that
timed out) is stale and dropped by the agent; a request whose seq does not increase is
refused by the server (code "order"). Bad messages are refused with a code from CODES and
counted on both sides; nothing a peer sends can raise past `decode`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

PROTO = 1
MAX_HEADER = 4096
MAX_ROWS = 8192         # windows in one request
MAX_SPAN = 768          # tokens in one window's span (window 256, predict-next)
MAX_FRAME = MAX_ROWS * MAX_SPAN * 2
MAX_TOKEN = 1 << 16    # token ids are indices into a vocabulary (uint16 on the wire)
TOPIC = b"fleet"
CODES = ("version", "malformed", "oversized", "order", "unknown-model", "busy", "internal",
         "no-model", "current", "refused")
MAX_PART = 8 << 20      # bytes of a baseline in one message
MAX_PARTS = 64          # so a baseline of at most 512 MiB
MAX_FILES = 32          # files in a bundle
MAX_BUNDLE = 256 << 20  # bytes of a bundle
READY_S = 1.0           # a worker's heartbeat
MAX_MODELS = 256        # model ids in a ready or models message

# frame layouts of each type: (name, dtype, shape from the header)
FRAMES = {
    "score": (("tokens", "<u2", ("rows", "span")), ("valid", "<i2", ("rows",)),
              ("starts", "<i8", ("rows",))),
    "scores": (("scores", "<f4", ("rows",)),),
    "error": (),
    "event": (),
    "baseline": (("data", "<u1", ("bytes",)),),
    "stored": (),
    "fetch": (),
    "bundle": None,     # one frame per file, sizes in the header
    "ready": (),
    "models": (),
    "want": (),
}
# header keys each type must carry, with their types
KEYS = {
    "score": {"seq": int, "model": str, "rows": int, "span": int, "role": str,
              "version": str},
    "scores": {"seq": int, "model": str, "rows": int, "worker": int, "infer_ms": float},
    "error": {"seq": int, "code": str, "reason": str},
    "event": {"kind": str, "server": str, "version": str, "models": list, "time": float},
    "baseline": {"seq": int, "role": str, "version": str, "part": int, "parts": int,
                 "bytes": int, "sha256": str},
    "stored": {"seq": int, "part": int, "parts": int, "complete": bool},
    "fetch": {"seq": int, "role": str, "version": str, "have": str},
    "bundle": {"seq": int, "role": str, "model": str, "sha256": str, "names": list,
               "sizes": list},
    "ready": {"version": str, "name": str, "index": int, "device": str, "models": list},
    "models": {"models": list},
    "want": {"seq": int, "model": str, "version": str},
}
ROLE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class ProtocolError(ValueError):
    """A message that breaks the schema; `code` is one of CODES."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


@dataclass
class Message:
    type: str
    header: dict
    arrays: dict[str, np.ndarray]


def encode(type_: str, header: dict, **arrays: np.ndarray) -> list[bytes]:
    """The frames of one message (the sender's own data: checked by assertion only)."""
    h = {"proto": PROTO, "type": type_, **header}
    frames = [json.dumps(h, separators=(",", ":")).encode()]
    if type_ == "bundle":
        return frames + [bytes(arrays[n]) for n in header["names"]]
    for name, dtype, _ in FRAMES[type_]:
        frames.append(np.ascontiguousarray(arrays[name], dtype=dtype).tobytes())
    return frames


def decode(frames: list[bytes], expect: tuple[str, ...]) -> Message:
    """Check and decode a received message of one of the `expect`ed types; ProtocolError
    for anything else."""
    if not frames:
        raise ProtocolError("malformed", "an empty message")
    raw = bytes(frames[0])
    if len(raw) > MAX_HEADER:
        raise ProtocolError("oversized", f"a header of {len(raw)} bytes (at most "
                            f"{MAX_HEADER})")
    try:
        h = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("malformed", "the header is not JSON") from None
    if not isinstance(h, dict):
        raise ProtocolError("malformed", "the header is not a JSON object")
    proto = h.get("proto")
    if proto != PROTO:
        peer = h.get("version") if isinstance(h.get("version"), str) else "?"
        raise ProtocolError("version", f"fleet protocol {proto!r} (sysdream {peer[:40]}); "
                            f"this side speaks {PROTO}: run the same sysdream release on "
                            "the agents and the server")
    t = h.get("type")
    if t not in expect:
        raise ProtocolError("malformed", f"a message of type {str(t)[:40]!r} where "
                            f"{' or '.join(expect)} is expected")
    for key, kind in KEYS[t].items():
        v = h.get(key)
        ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
        if kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            raise ProtocolError("malformed", f"{t}: {key} missing or not a "
                                f"{kind.__name__}")
    if "role" in h and not (isinstance(h["role"], str) and 0 < len(h["role"]) <= 64
                            and set(h["role"]) <= ROLE_CHARS
                            and not h["role"].startswith(".")):
        raise ProtocolError("malformed", f"{t}: a role of letters, digits, _, . or - "
                            "(not starting with .)")
    if t == "bundle":
        return _bundle(frames, h)
    if t in ("ready", "models"):
        _ids(t, h["models"], pairs=t == "models")
    if t == "want" and not _model_id(h["model"]):
        raise ProtocolError("malformed", "want: a model id of letters and digits")
    if t == "baseline" and not (0 <= h["part"] < h["parts"] <= MAX_PARTS
                                and 0 < h["bytes"] <= MAX_PART):
        raise ProtocolError("oversized" if h["bytes"] > MAX_PART or h["parts"] > MAX_PARTS
                            else "malformed", f"baseline: part {h['part']} of "
                            f"{h['parts']}, {h['bytes']} bytes (at most {MAX_PARTS} parts "
                            f"of {MAX_PART})")
    layout = FRAMES[t]
    if len(frames) != 1 + len(layout):
        raise ProtocolError("malformed", f"{t}: {len(frames) - 1} array frames, not "
                            f"{len(layout)}")
    if layout and "rows" in KEYS[t]:
        rows = h["rows"]
        span = h.get("span", 1)
        if not 0 < rows <= MAX_ROWS:
            raise ProtocolError("oversized" if rows > MAX_ROWS else "malformed",
                                f"{t}: {rows} rows (1 to {MAX_ROWS})")
        if not 0 < span <= MAX_SPAN:
            raise ProtocolError("oversized" if span > MAX_SPAN else "malformed",
                                f"{t}: a span of {span} (1 to {MAX_SPAN})")
    arrays = {}
    for frame, (name, dtype, dims) in zip(frames[1:], layout, strict=True):
        shape = tuple(h[d] for d in dims)
        want = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(frame) != want:
            raise ProtocolError("malformed", f"{t}: {name} holds {len(frame)} bytes, not "
                                f"{want} for shape {shape}")
        arrays[name] = np.frombuffer(frame, dtype=dtype).reshape(shape)
    if t == "score":
        tok, valid, starts = arrays["tokens"], arrays["valid"], arrays["starts"]
        if tok.size and (tok.min() < 0 or tok.max() >= MAX_TOKEN):
            raise ProtocolError("malformed", "score: a token id out of range")
        if valid.min() < 1 or valid.max() > h["span"] or starts.min() < 0:
            raise ProtocolError("malformed", "score: valid or starts out of range")
    if t == "scores" and not np.all(np.isfinite(arrays["scores"])):
        raise ProtocolError("malformed", "scores: a score that is not finite")
    return Message(t, h, arrays)


def _model_id(v) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 64 and v.isascii() and v.isalnum()


def _ids(t: str, items: list, pairs: bool) -> None:
    """A list of model ids (ready) or of [model id, sha256] pairs (models)."""
    if len(items) > MAX_MODELS:
        raise ProtocolError("oversized", f"{t}: {len(items)} models (at most {MAX_MODELS})")
    for it in items:
        if pairs:
            ok = isinstance(it, list) and len(it) == 2 and _model_id(it[0]) \
                and isinstance(it[1], str) and len(it[1]) == 64
        else:
            ok = _model_id(it)
        if not ok:
            raise ProtocolError("malformed", f"{t}: a model entry {str(it)[:60]!r}")


def _bundle(frames: list[bytes], h: dict) -> Message:
    names, sizes = h["names"], h["sizes"]
    if not (0 < len(names) == len(sizes) == len(frames) - 1 <= MAX_FILES):
        raise ProtocolError("malformed", f"bundle: {len(frames) - 1} files for "
                            f"{len(names)} names")
    for n, size, f in zip(names, sizes, frames[1:], strict=True):
        if not (isinstance(n, str) and 0 < len(n) <= 64 and "/" not in n
                and not n.startswith(".") and "\0" not in n):
            raise ProtocolError("malformed", f"bundle: a file name {str(n)[:40]!r}")
        if not (isinstance(size, int) and not isinstance(size, bool) and size == len(f)):
            raise ProtocolError("malformed", f"bundle: {n} holds {len(f)} bytes, not "
                                f"{size}")
    if sum(sizes) > MAX_BUNDLE or len(set(names)) != len(names):
        raise ProtocolError("oversized" if sum(sizes) > MAX_BUNDLE else "malformed",
                            "bundle: too large, or a file named twice")
    if "manifest.json" not in names:
        raise ProtocolError("malformed", "bundle: no manifest.json")
    return Message("bundle", h, {n: bytes(f) for n, f in zip(names, frames[1:],
                                                             strict=True)})


def error(seq: int, code: str, reason: str) -> list[bytes]:
    return encode("error", {"seq": seq, "code": code, "reason": reason[:300]})
