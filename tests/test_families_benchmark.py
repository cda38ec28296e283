"""benchmarks/families: the committed table derives from the committed ledgers alone."""

from benchmarks import families


def test_table_derives_from_the_committed_ledgers(tmp_path):
    rows = families.build()
    presets = [r["preset"] for r in rows]
    assert {"stc", "signsgd-ef"} <= set(presets) and {"drive", "eden-2bit", "powersgd-r2", "fetchsgd"} <= set(presets)
    budget = max(r["rounds"] for r in rows)
    assert all(r["rounds"] == budget for r in rows)  # the baselines are cut to the families' budget
    families.write(rows, tmp_path, longer=families.build_longer())
    assert (tmp_path / "table.md").read_text() == (families.HERE / "table.md").read_text()
    assert (tmp_path / "table.csv").read_text() == (families.HERE / "table.csv").read_text()
