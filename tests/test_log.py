"""fedsqueeze.log: the progress logger, its human and records forms, and the runner's reading of records."""

from __future__ import annotations

import logging

import pytest

from fedsqueeze import log as fsqlog
from fedsqueeze.log import HUMAN, LOG_FORMAT_ENV, RECORDS, configure, event, get_logger, parse_record


@pytest.fixture
def fedsqueeze_logger():
    """The ``fedsqueeze`` logger, restored after the test (configure() changes it process-wide)."""
    logger = logging.getLogger("fedsqueeze")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_module_loggers_are_children_of_fedsqueeze():
    assert get_logger("server.federation").name == "fedsqueeze.server.federation"
    assert get_logger("fedsqueeze.data").name == "fedsqueeze.data"
    assert get_logger("fedsqueeze").name == "fedsqueeze"


def test_human_form_is_the_documented_prefix_and_names_warnings(fedsqueeze_logger, capsys, monkeypatch):
    monkeypatch.delenv(LOG_FORMAT_ENV, raising=False)
    configure()
    get_logger("server.federation").info("round 1: acc=0.5", extra=event("round", round=1, phase="train"))
    get_logger("server.server_app").warning("this simulation has 2 SuperNodes")
    get_logger("fedsqueeze.data").debug("not shown: below INFO")
    assert capsys.readouterr().out == ("[fedsqueeze] round 1: acc=0.5\n"
                                       "[fedsqueeze] WARNING: this simulation has 2 SuperNodes\n")


def test_configure_twice_prints_once_and_not_through_the_root_logger(fedsqueeze_logger, capsys, caplog):
    configure(HUMAN)
    configure(RECORDS)
    get_logger("x").info("once")
    out = capsys.readouterr().out
    assert out.count("once") == 1 and parse_record(out)["message"] == "once"
    assert "once" not in caplog.text  # not propagated to the root logger's handlers


def test_records_form_roundtrips_message_level_and_event_fields(fedsqueeze_logger, capsys):
    configure(RECORDS)
    get_logger("server.federation").info("round 12 [finetune-0.5]: acc=0.9 → ≥", extra=event(
        "round", round=12, phase="finetune-0.5"))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("server.federation").exception("query failed")
    lines = capsys.readouterr().out.splitlines(keepends=True)
    assert len(lines) == 2 and all(ln.isascii() for ln in lines)  # one line per record, traceback included
    first, second = (parse_record(ln) for ln in lines)
    assert first["message"] == "round 12 [finetune-0.5]: acc=0.9 → ≥" and first["level"] == "INFO"
    assert (first["event"], first["round"], first["phase"]) == ("round", 12, "finetune-0.5")
    assert first["logger"] == "fedsqueeze.server.federation"
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["message"] and "event" not in second


def test_event_fields_cannot_overwrite_the_record_fields(fedsqueeze_logger, capsys):
    configure(RECORDS)
    get_logger("x").info("real", extra=event("round", round=1, message="fake", level="ERROR"))
    rec = parse_record(capsys.readouterr().out)
    assert (rec["message"], rec["level"], rec["round"]) == ("real", "INFO", 1)


@pytest.mark.parametrize("line", [
    "[fedsqueeze] round 1: acc=0.5\n",                      # the human form is text, not a record
    "round 1: acc=0.5\n",
    'x {"fedsqueeze": 1, "level": "INFO", "message": "x"}\n',  # a record inside other text
    '{"fedsqueeze": 1, "level": "INFO", "message": "x"} x\n',
    '{"fedsqueeze": 1, "level": "INFO", "message": "x"\n',  # cut short
    "{not json\n",
    '["fedsqueeze", 1]\n',
    '{"fedsqueeze": 2, "level": "INFO", "message": "x"}\n',  # another schema
    '{"level": "INFO", "message": "x"}\n',  # somebody else's JSON log line
    '{"fedsqueeze": 1, "level": "INFO"}\n',
    '{"fedsqueeze": 1, "level": 20, "message": "x"}\n',
    "",
])
def test_only_well_formed_records_are_records(line):
    assert parse_record(line) is None


def test_a_record_line_is_one_line_for_every_line_splitter(fedsqueeze_logger, capsys):
    configure(RECORDS)
    get_logger("x").info("a\nb\x1ec\x0bd\u2028e")
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and out.count("\n") == 1
    assert parse_record(out)["message"] == "a\nb\x1ec\x0bd\u2028e"


def test_an_unknown_form_is_a_clear_error(fedsqueeze_logger, monkeypatch):
    monkeypatch.setenv(LOG_FORMAT_ENV, "json")
    with pytest.raises(ValueError, match="FEDSQUEEZE_LOG_FORMAT='json'"):
        configure()
    monkeypatch.setenv(LOG_FORMAT_ENV, RECORDS)
    assert isinstance(configure().handlers[-1].formatter, fsqlog.RecordFormatter)


def test_render_shows_levels_from_warning_up():
    assert fsqlog.render("INFO", "x") == "[fedsqueeze] x"
    assert fsqlog.render("ERROR", "run config: bad") == "[fedsqueeze] ERROR: run config: bad"
    assert fsqlog.render("WARNING", "w") == "[fedsqueeze] WARNING: w"
