"""InputError's one line: where (file, then column or setting), then the problem."""

from ehr_ssl.errors import InputError


def test_the_line_names_the_file_then_the_column_or_the_setting():
    assert str(InputError("is null", file="visits.parquet", column="visit_id")) == (
        "visits.parquet: column 'visit_id': is null"
    )
    assert str(InputError("must be >= 1", file="run.toml", setting="train.epochs")) == (
        "run.toml: setting 'train.epochs': must be >= 1"
    )
    assert str(InputError("must be >= 1", setting="train.epochs")) == (
        "setting 'train.epochs': must be >= 1"
    )
    assert str(InputError("no such file")) == "no such file"


def test_naming_the_file_keeps_what_and_where():
    error = InputError("must be int, got str", setting="model.hidden_size").in_file("a.toml")
    assert (error.file, error.column, error.setting, error.problem) == (
        "a.toml", None, "model.hidden_size", "must be int, got str"
    )  # fmt: skip
    assert str(error) == "a.toml: setting 'model.hidden_size': must be int, got str"
