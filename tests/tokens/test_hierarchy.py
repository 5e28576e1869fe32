"""Tests of the code hierarchy: the spelling rule (ICD, ATC), parent tables followed
transitively, a tokens directory's parent table, and the ancestor index an encoder embeds."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ehr_ssl.errors import InputError
from ehr_ssl.layout import CODES_FILE
from ehr_ssl.tokens.hierarchy import (
    ancestor_index,
    ancestor_map,
    code_ancestors,
    read_parent_codes,
)
from ehr_ssl.tokens.vocab import SPECIAL_TOKENS


@pytest.mark.parametrize(
    "code, ancestors",
    [
        ("DX//I50.9", ["DX//I50"]),
        ("ICD9//428.0", ["ICD9//428"]),
        ("DIAGNOSIS//ICD//10//I5030", ["DIAGNOSIS//ICD//10//I50"]),
        ("PROCEDURE//ICD//10//0DTJ4ZZ", ["PROCEDURE//ICD//10//0DT"]),
        ("MEDICATION//N02BE01", ["MEDICATION//N02BE", "MEDICATION//N02B", "MEDICATION//N02"]),
        ("LAB//CREATININE", []),  # not a class by prefix
        ("PROC//59861", []),  # CPT: no prefix hierarchy
        ("STATIC//sex//F", []),
        ("DX//.5", []),
        ("ICD9//E880.9", ["ICD9//E880"]),
        ("DX//S72.001A", ["DX//S72"]),
        ("MEDICATION//Sodium Chloride 0.9% Flush", []),  # a decimal in a name is no class
        ("LAB//HbA1c 5.7", []),
        ("I50.9", ["I50"]),  # no vocabulary prefix
    ],
)
def test_the_rollup_rule_follows_icd_and_atc(code, ancestors):
    assert code_ancestors(code) == ancestors


def test_a_parent_table_is_followed_transitively_and_replaces_the_rule():
    parents = {"A//x": ["A//grp"], "A//grp": ["A//top", "A//x"], "A//top": []}  # a cycle too
    lineage = ancestor_map(["A//x", "DX//I50.9"], parents)
    assert lineage == {"A//x": ["A//grp", "A//top"], "DX//I50.9": []}


def test_the_parent_table_of_a_tokens_directory(tmp_path):
    assert read_parent_codes(tmp_path) is None
    pl.DataFrame({"code": ["A//x", "A//y"], "parent_codes": [["A//g"], None]}).write_parquet(
        tmp_path / CODES_FILE
    )
    assert read_parent_codes(tmp_path) == {"A//x": ["A//g"], "A//y": []}
    schema = {"code": pl.String, "parent_codes": pl.List(pl.String)}
    no_parents = pl.DataFrame({"code": ["A//x"], "parent_codes": [None]}, schema=schema)
    no_parents.write_parquet(tmp_path / CODES_FILE)
    assert read_parent_codes(tmp_path) is None  # no hierarchy: the spelling rule's roll-ups
    pl.DataFrame({"code": ["A//x"]}).write_parquet(tmp_path / CODES_FILE)
    with pytest.raises(InputError, match="parent_codes"):
        read_parent_codes(tmp_path)


def test_the_ancestor_index_numbers_shared_ancestors_nearest_first():
    vocab = [*SPECIAL_TOKENS, "MED//N02BE01", "MED//N02BE51", "MED//N02BA01", "DX//I50.1",
             "DX//J18.9", "LAB//HGB"]  # fmt: skip
    names, ids = ancestor_index(vocab)
    # DX//I50 and DX//J18 sit above one code each; N02BE above two, N02B and N02 above three
    assert names == ["MED//N02", "MED//N02B", "MED//N02BE"]
    first = len(SPECIAL_TOKENS)
    assert ids.shape == (len(vocab), 3) and ids.dtype == np.int64
    assert not ids[:first].any()  # special tokens ([UNK] included) have none
    np.testing.assert_array_equal(ids[first : first + 3], [[3, 2, 1], [3, 2, 1], [2, 1, 0]])
    assert not ids[first + 3 :].any()
    # capped to the nearest ancestor: N02BA01 keeps N02BA, above no other kept code, so it
    # gets none, and N02B, N02 are no code's kept ancestor
    names_capped, capped = ancestor_index(vocab, max_per_code=1)
    assert names_capped == ["MED//N02BE"] and capped.shape == (len(vocab), 1)
    np.testing.assert_array_equal(capped[first : first + 3, 0], [1, 1, 0])


def test_without_shared_ancestors_the_index_is_one_empty_column():
    names, ids = ancestor_index([*SPECIAL_TOKENS, "DX//I50.1", "LAB//HGB"])
    assert names == [] and ids.shape == (len(SPECIAL_TOKENS) + 2, 1) and not ids.any()


def test_a_code_that_is_a_class_of_others_shares_that_class_vector():
    # DX//I50 is a code (a rare I50.x backed off to it, or an unspecified I50) and the class of
    # I50.1: the two share the class; N02BE is ATC level 4 of N02BE01 and itself under N02B.
    vocab = [*SPECIAL_TOKENS, "DX//I50", "DX//I50.1", "DX//J18.9", "MED//N02BE", "MED//N02BE01"]
    names, ids = ancestor_index(vocab)
    assert names == ["DX//I50", "MED//N02BE"]
    first = len(SPECIAL_TOKENS)
    np.testing.assert_array_equal(ids[first:, 0], [1, 1, 0, 2, 2])
