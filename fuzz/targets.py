"""The fuzz targets: every parser on the request and reply paths, and the files Predis reads.

Each target takes one input (bytes) and either returns or raises. What it may do with bad input is
part of the target: a clear error of the parser's own kind (``ClientProtocolError`` for a request,
``ValueError`` for a reply Redis would never send, ``DataError`` for a trace, ``ModelError`` for a
model) or a correct result. Where a reference exists the result is checked against it
(differential): the request parser against hiredis (a request's multibulk is a RESP array of bulk
strings) and against itself fed in pieces; the GET and SET run parsers against the general parser;
the reply scanner's frames against hiredis's replies. Anything else raised (IndexError, an
assertion, a hang that the fuzzer's timeout catches) is a finding.

``python -m fuzz.run TARGET`` runs one under atheris (coverage-guided); ``TARGETS`` names them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import hiredis

from common.errors import ClientProtocolError, DataError
from proxy.framing import get_run_keys, set_run_keys, single_get_key, single_set_key
from proxy.resp import Limits, RequestParser
from proxy.scanner import ReplyScanner

SMALL = Limits(max_bulk_len=1 << 16, max_multibulk_len=1024, max_inline_len=1 << 14, max_query_buffer=1 << 20)


def _parse_all(data: bytes, cuts: list[int]) -> tuple[list[list[bytes]], str | None]:
    """The commands a parser returns for ``data`` fed in pieces cut at ``cuts``, and the protocol
    error it ends with (None: none)."""
    parser = RequestParser(SMALL)
    out: list[list[bytes]] = []
    error = None
    start = 0
    for end in [*cuts, len(data)]:
        parser.feed(data[start:end])
        start = end
        try:
            out += [args for args, _, _ in parser.parse()]
            parser.consume()
        except ClientProtocolError as exc:
            error = str(exc)
            break
    if error is None and parser.error is not None:
        error = str(parser.error)
    return out, error


def request_parser(data: bytes) -> None:
    whole, error = _parse_all(data, [])
    # Fed in pieces (cut where the input's first byte says), the same commands and the same error.
    step = 1 + (data[0] % 7 if data else 0)
    pieces, piece_error = _parse_all(data, list(range(step, len(data), step)))
    if error is None or piece_error is None:
        assert pieces == whole, (pieces, whole)
    else:
        assert pieces[: len(whole)] == whole[: len(pieces)]
    assert (error is None) == (piece_error is None) or "query buffer" in f"{error}{piece_error}"
    # Against hiredis: a run of multibulk requests is a run of RESP arrays of bulk strings.
    if error is None and data.startswith(b"*") and whole:
        reader = hiredis.Reader()
        reader.feed(data)
        try:
            for args in whole:
                reply = reader.gets()
                if not isinstance(reply, list) or reply == []:
                    # An inline command (hiredis reads RESP only), or a null or empty one: *-1 and
                    # *0 Redis skips, but =-1, $-1, _ and ~0 it reads as inline commands, and
                    # hiredis reads them all alike. The comparison stops there.
                    break
                assert reply == args, (reply, args)
        except (hiredis.ProtocolError, TypeError):
            pass  # (the same; or a map hiredis cannot build, which the parser refused too)


def request_reader(data: bytes) -> None:
    """The connection's request path (hiredis for multibulk, our parser for inline and after an
    error, proxy.requests) hands on the same commands as our parser alone, each with the client's
    own bytes for it, and ends with the same error; hiredis never gets to allocate what a request
    declares (the fuzzer's memory limit catches that)."""
    from proxy.requests import RequestReader

    got: list[list[bytes]] = []

    def as_redis_reads(raw: bytes) -> list[list[bytes]]:
        parser = RequestParser(SMALL)  # (Redis's reading: the request_parser target checks it)
        parser.feed(raw)
        cmds = [args for args, _, _ in parser.parse()]
        parser.consume()
        assert parser.error is None and parser.pending_bytes() == 0, (raw, parser.error)
        return cmds

    def on_commands(cmds: list[list[bytes]], raw: bytes) -> bool:
        # The bytes handed on are what Redis reads as exactly these commands: an argument sent as
        # a simple string or a big number, which hiredis reads as a bulk string, must not pass.
        assert as_redis_reads(raw) == cmds, (raw, cmds)
        got.extend(cmds)
        return False

    def on_each(cmds: list[list[bytes]], raws: list[bytes | None]) -> bool:
        for cmd, raw in zip(cmds, raws, strict=True):  # (None: an inline command, re-encoded)
            assert raw is None or as_redis_reads(raw) == [cmd], (raw, cmd)
        got.extend(cmds)
        return False

    reader = RequestReader(SMALL, on_commands, on_each)
    error = None
    step = 1 + (data[0] % 5 if data else 0)
    try:
        for at in range(0, len(data), step):
            assert reader.feed(data[at : at + step]) is None  # (no SYNC here: never a raw pipe)
    except ClientProtocolError as exc:
        error = str(exc)
    want, want_error = _parse_all(data, [])
    if error is None and want_error is None:
        assert got == want, (got, want)
    else:
        assert got == want[: len(got)] or want == got[: len(want)], (got, want)


def get_and_set_runs(data: bytes) -> None:
    """The fast paths' parsers say yes only to what the general parser reads as the same GETs or
    plain SETs."""
    parsed, error = _parse_all(data, [])
    for fast, name, width in ((get_run_keys, b"GET", 2), (set_run_keys, b"SET", 3)):
        keys = fast(data)
        if keys is not None:
            assert error is None, error
            assert [a[0].upper() for a in parsed] == [name] * len(parsed)
            assert all(len(a) == width for a in parsed)
            assert [a[1] for a in parsed] == keys
    for single, name, width in ((single_get_key, b"GET", 2), (single_set_key, b"SET", 3)):
        key = single(data)
        if key is not None:
            assert error is None and len(parsed) == 1, (parsed, error)
            assert parsed[0][0].upper() == name and len(parsed[0]) == width and parsed[0][1] == key


HUGE_AGGREGATE = re.compile(rb"[*>~%|][0-9]{7,}")
BAD_BOOLEAN = re.compile(rb"#(?![tf]\r\n)")


def _hiredis_replies(data: bytes) -> list[object] | None:
    """hiredis's replies in ``data`` (None if it is not valid RESP to hiredis)."""
    reader = hiredis.Reader()
    reader.feed(data)
    replies = []
    try:
        while (reply := reader.gets()) is not False:
            replies.append(reply)
    except (hiredis.ProtocolError, TypeError):  # (TypeError: a map keyed by an array or a push)
        return None
    return replies


def reply_scanner(data: bytes) -> None:
    """On valid RESP (hiredis reads it), the frames found are hiredis's replies, one each (a
    leading attribute kept with its reply, which hiredis hands out as a reply of its own), and the
    same when the bytes come in two pieces. On anything else (bytes Redis never sends): frames or
    ValueError, never another exception."""
    scanner = ReplyScanner(max_line=1 << 14)
    try:
        ends = [end for end, _ in scanner.feed(data)]
    except ValueError:
        ends = None
    cut = len(data) // 2
    again = ReplyScanner(max_line=1 << 14)
    try:
        halves: list[int] | None = [end for end, _ in again.feed(data[:cut])]
        halves += [end + cut for end, _ in again.feed(data[cut:])]  # type: ignore[operator]
    except ValueError:
        halves = None
    if HUGE_AGGREGATE.search(data) or _hiredis_replies(data) is None or BAD_BOOLEAN.search(data):
        return  # (not valid RESP; hiredis reads a boolean other than #t or #f as no reply at all)
    assert ends is not None and halves == ends, (halves, ends)
    start = 0
    for end in ends:
        frame = data[start:end]
        if b"\r\n|" in frame:  # (an attribute inside an aggregate: hiredis counts it as an
            start = end  # element, the RESP3 spec and the scanner do not)
            continue
        replies = _hiredis_replies(frame)
        assert replies is not None, frame
        assert len(replies) == 1 or (len(replies) > 1 and frame.startswith(b"|")), frame
        start = end
    rest = _hiredis_replies(data[start:])  # (an unfinished reply: hiredis sees none complete either)
    assert rest == [] or b"|" in data[start:], data[start:]


def tracking_messages(data: bytes) -> None:
    """What hiredis reads off the tracking connection goes to the invalidation channel's handler:
    invalidations take keys out of the tier, anything else is ignored; nothing raises."""
    from prefetch.store import make_store
    from prefetch.tier import HotTier
    from proxy.backchannel import InvalidationChannel

    tier = HotTier(1 << 20, store=make_store("cpu", 1 << 20))
    tier.active = True
    for i in range(4):  # (entries the invalidations may take out)
        key = b"k%d" % i
        token = tier.begin_fill(0, key)
        assert token is not None and tier.complete_fill(0, key, token, b"v", -1, 0.0, "default")
    channel = InvalidationChannel.__new__(InvalidationChannel)  # (no connection: its handler only)
    channel.tier = tier
    if HUGE_AGGREGATE.search(data):
        return  # (Redis, trusted, declares no such push; hiredis would allocate it: the fuzzer's OOM)
    reader = hiredis.Reader()
    reader.feed(data)
    named: set[bytes] = set()
    try:
        while (reply := reader.gets()) is not False:
            if isinstance(reply, list):
                push = list(reply)
                if push and push[0] == b"invalidate" and len(push) > 1 and isinstance(push[1], list):
                    named.update(k for k in push[1] if isinstance(k, bytes))
                channel.on_push(push)
    except (hiredis.ProtocolError, TypeError):
        # As RawConnection does: the tracking connection is dropped, and the channel flushes the
        # tier when it is lost (a key of an unhashable type in an invalidation raises TypeError).
        tier.flush()
    for key in named:  # (an invalidated key is gone)
        assert (0, key) not in tier.entries, key


def trace_readers(data: bytes) -> None:
    """Every trace format reads the bytes as a trace or says what is wrong with them."""
    from accesslog.traces import FORMATS, read_trace

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fuzzed.trace")
        Path(path).write_bytes(data)
        for fmt in FORMATS:
            try:
                log = read_trace(path, fmt)
            except DataError:
                continue
            assert len(log) > 0


_TINY: dict[str, bytes] = {}


def tiny_model() -> tuple[bytes, bytes]:
    """(weights, manifest) of a tiny real model: the manifest target's weights, and its seed."""
    if not _TINY:
        from ml.models.lstm.model import LSTMConfig, NextKeyLSTM
        from ml.registry import MANIFEST, WEIGHTS, save_model
        from ml.vocab import Vocabulary

        vocab = Vocabulary(["a:1", "a:2"], ["a:#"])
        cfg = LSTMConfig(
            key_vocab=vocab.key_size,
            template_vocab=vocab.template_size,
            key_dim=2,
            template_dim=2,
            feature_dim=2,
            hidden=4,
            layers=1,
            succ_dim=2,
        )
        with tempfile.TemporaryDirectory() as tmp:
            save_model(NextKeyLSTM(cfg), vocab, tmp)
            _TINY["weights"] = (Path(tmp) / WEIGHTS).read_bytes()
            _TINY["manifest"] = (Path(tmp) / MANIFEST).read_bytes()
    return _TINY["weights"], _TINY["manifest"]


def model_manifest(data: bytes) -> None:
    """A model directory (a tiny model's weights) whose manifest is the input, with the weights'
    checksum put right when the input is a JSON object, so that the loader goes past it: the model
    loads, or one ModelError says why not."""
    from ml.registry import FORMAT, MANIFEST, WEIGHTS, ModelError, _sha256, load_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        weights = model_dir / WEIGHTS
        weights.write_bytes(tiny_model()[0])
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if isinstance(doc, dict):
            doc.setdefault("format", FORMAT)
            doc["weights_sha256"] = _sha256(weights)
            data = json.dumps(doc).encode()
        (model_dir / MANIFEST).write_bytes(data)
        try:
            load_model(model_dir)
        except ModelError:
            return


TARGETS: dict[str, Callable[[bytes], None]] = {
    "request_parser": request_parser,
    "request_reader": request_reader,
    "get_and_set_runs": get_and_set_runs,
    "reply_scanner": reply_scanner,
    "tracking_messages": tracking_messages,
    "trace_readers": trace_readers,
    "model_manifest": model_manifest,
}
