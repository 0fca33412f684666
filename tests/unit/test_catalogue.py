"""The topic catalogue is complete and the schema section of docs/topics.md matches the code."""

from __future__ import annotations

from pathlib import Path

from ops.cli.schema_docs import BEGIN, END, catalogue_markdown
from storage.migrate import load_migrations
from topics.catalogue import TOPICS, Cleanup
from topics.records import ALL_RECORDS

ROOT = Path(__file__).resolve().parents[2]


def test_every_record_type_when_catalogued_then_has_a_topic_and_a_table() -> None:
    assert {t.record for t in TOPICS} == set(ALL_RECORDS)
    assert len({t.name for t in TOPICS}) == len(TOPICS)
    assert len({t.table for t in TOPICS}) == len(TOPICS)
    sql = "\n".join(m.sql for m in load_migrations())
    for t in TOPICS:
        assert f"CREATE TABLE {t.table} (" in sql, t.table


def test_every_record_type_when_published_without_topic_then_has_one_default() -> None:
    from topics.catalogue import DEFAULT_TOPIC
    from topics.records import Bar

    assert set(DEFAULT_TOPIC) == set(ALL_RECORDS)
    assert DEFAULT_TOPIC[Bar] == "market.bars.raw"


def test_latest_state_topics_when_catalogued_then_compacted_and_streams_have_retention() -> None:
    by = {t.name: t for t in TOPICS}
    for name in ("control", "models.registry", "gates.results", "market.bars"):
        assert by[name].cleanup is Cleanup.COMPACT and by[name].config()["cleanup.policy"] == "compact"
    for t in TOPICS:
        if t.cleanup is Cleanup.DELETE:
            assert t.retention_ms is not None and t.retention_ms > 0, t.name


def test_readme_schema_section_when_compared_then_equals_generated_docs() -> None:
    doc = (ROOT / "docs" / "topics.md").read_text()
    assert BEGIN in doc and END in doc
    section = doc.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert section == catalogue_markdown().strip(), "docs/topics.md schemas are stale: run `tradeflow topics` and paste"
