"""The dead-letter record: a valid buffer envelope, cut to a size limit when it must be."""

import base64
import hashlib
import json

from policy_sync.dead_letters import DeadLetter
from policy_sync.envelope import decode_buffer_body


def test_dead_letter_json_decodes_as_envelope():
    letter = DeadLetter(b'{"a": 1}', "no_such_level", "policy 10 has 3 levels", 1234, {"topic": "user/logins"})

    decoded = decode_buffer_body(letter.to_json(), sent_at_ms=99)

    assert decoded.payload == b'{"a": 1}'
    assert decoded.received_at_ms == 1234
    assert decoded.coordinates["topic"] == "user/logins"


def test_oversized_dead_letter_is_cut_and_describes_original():
    payload = b"x" * 50_000
    letter = DeadLetter(payload, "too_large", "", 1, {})

    text = letter.to_json(max_bytes=10_000)
    body = json.loads(text)

    assert len(text) <= 10_000
    assert body["payload_truncated"] is True
    assert body["payload_size"] == 50_000
    assert body["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert payload.startswith(base64.b64decode(body["payload_b64"]))


def test_small_dead_letter_is_not_marked_truncated():
    body = json.loads(DeadLetter(b"{}", "not_json", "", 1, {}).to_json(max_bytes=10_000))

    assert "payload_truncated" not in body
