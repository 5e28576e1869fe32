"""The documented contract (data_schemas/*.json) must match the code's schema."""

import json
from pathlib import Path

import pytest

from ehr_ssl.data.schema import TABLES, schema_document

SCHEMAS = Path(__file__).resolve().parents[2] / "data_schemas"


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_documented_schema_matches_code(table):
    documented = json.loads((SCHEMAS / f"{table.name}.schema.json").read_text())
    assert documented == schema_document(table), (
        f"data_schemas/{table.name}.schema.json is out of date: run `make schemas`"
    )


def test_readme_names_every_column():
    readme = (SCHEMAS / "README.md").read_text()
    for table in TABLES:
        for column in table.columns:
            assert f"`{column.name}`" in readme, f"{table.name}.{column.name} not documented"
