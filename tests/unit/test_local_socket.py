"""The socket's permission setting, and the redaction of secrets in a printed mapping."""

from __future__ import annotations

import pytest

from sidecar.errors import MappingError, UsageError
from sidecar.local_socket import parse_mode
from sidecar.mapping.model import REDACTED, Mapping


@pytest.mark.parametrize("raw, mode", [("600", 0o600), ("0600", 0o600), ("660", 0o660), (640, 0o640), ("700", 0o700)])
def test_socket_modes_that_keep_other_users_out(raw: object, mode: int) -> None:
    assert parse_mode(raw) == mode


@pytest.mark.parametrize("raw, why", [
    ("666", "every user of the host"), ("602", "every user of the host"), ("1600", "within 777"),
    ("400", "owner read and write"), ("200", "owner read and write"), ("", "octal permissions"),
    ("6o0", "octal permissions"), ("９００", "octal permissions"), ("-600", "within 777")])
def test_socket_modes_refused_with_the_reason(raw: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_mode(raw)


DOC = {"clusters": {"c1": {"bootstrap": "127.0.0.1:9092", "role": "fronting",
                           "config": {"sasl.password": "pw", "ssl.key.pem": "PEM", "my.app_secret": "x",
                                      "sasl.username": "u"}}},
       "producer": {"__default__": {"where": [{"sink": "c1"}]}}, "consumer": {}}


def test_a_redacted_document_hides_every_secret_and_nothing_else() -> None:
    m = Mapping.from_document(DOC)
    assert m.to_document() == DOC
    assert m.to_document(redact=True)["clusters"]["c1"]["config"] == {
        "sasl.password": REDACTED, "ssl.key.pem": REDACTED, "my.app_secret": REDACTED, "sasl.username": "u"}


def test_a_redacted_document_is_refused_naming_each_placeholder() -> None:
    redacted = Mapping.from_document(DOC).to_document(redact=True)
    with pytest.raises(MappingError, match=r"clusters\.c1\.config: my\.app_secret, sasl\.password, ssl\.key\.pem "
                                           r"hold\(s\) '\*\*\*'"):
        Mapping.from_document(redacted)
