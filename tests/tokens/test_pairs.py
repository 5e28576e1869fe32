"""Patient-level pairs: a partner is always another train-split visit of the same patient, val and
test patients never take part, the draws are fixed by (seed, epoch, batch) and survive a
resume, and the collated batch carries the partner views and dense patient groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ehr_ssl.data.splits import SPLITS
from ehr_ssl.tokens.batching import LengthBucketSampler, TokenDataset, collate
from ehr_ssl.tokens.pairs import (
    HAS_PARTNER,
    PATIENT_GROUPS,
    PairedDataset,
    PatientPairSampler,
    PatientVisits,
    collate_pairs,
    split_partner,
)
from ehr_ssl.training.pretrain import pretraining_selection

# Visit i's patient and split: patient 0 has 3 train visits, 1 has 2, 2 has one train visit
# and one val visit (no partner for either), 3 is a val patient, 4 a test patient.
PATIENTS = np.array([0, 1, 0, 2, 3, 3, 4, 4, 1, 0, 2])
SPLIT = np.array(["train"] * 4 + ["val"] * 2 + ["test"] * 2 + ["train"] * 2 + ["val"])


def _draws(patients: PatientVisits, visits: np.ndarray, n: int = 300) -> np.ndarray:
    """(n, B): n independent partner draws for `visits`."""
    return np.stack(
        [patients.draw_partners(visits, np.random.default_rng(seed)) for seed in range(n)]
    )


def test_partners_are_other_train_visits_of_the_same_patient():
    patients = PatientVisits(PATIENTS, SPLIT == "train")
    visits = np.arange(len(PATIENTS))
    draws = _draws(patients, visits)
    has = draws >= 0
    assert (has == np.isin(visits, [0, 1, 2, 8, 9])).all(axis=0).all()  # the rest: none
    partner = np.where(has, draws, 0)
    assert (PATIENTS[partner][has] == np.broadcast_to(PATIENTS, draws.shape)[has]).all()
    assert (partner[has] != np.broadcast_to(visits, draws.shape)[has]).all()
    assert (SPLIT[partner[has]] == "train").all()
    # Uniform among the patient's other visits: visit 0 (patient 0) draws 2 and 9 alike.
    assert set(draws[:, 0]) == {2, 9} and abs((draws[:, 0] == 2).mean() - 0.5) < 0.1
    assert set(draws[:, 1]) == {8} and set(draws[:, 8]) == {1}
    assert patients.partner_counts(visits).tolist() == [2, 1, 2, 0, 0, 0, 0, 0, 1, 2, 0]


def test_groups_are_dense_and_equal_for_one_patient():
    patients = PatientVisits(PATIENTS, SPLIT == "train")
    visits = np.array([9, 6, 0, 7, 4])
    groups = patients.groups(visits)
    assert sorted(set(groups.tolist())) == [0, 1, 2]
    same = groups[:, None] == groups[None, :]
    assert (same == (PATIENTS[visits][:, None] == PATIENTS[visits][None, :])).all()


def test_on_tokens_test_and_val_patients_never_pair(cohort_tokens):
    dataset = TokenDataset(cohort_tokens, pretraining_selection(True), splits=SPLITS)
    patients = PatientVisits.of_dataset(dataset)
    split = dataset.meta["split"].to_numpy()
    patient_ids = dataset.meta["patient_id"].to_numpy()
    assert {"train", "val", "test"} <= set(split)
    visits = np.arange(len(dataset))
    partners = patients.draw_partners(visits, np.random.default_rng(0))
    has = partners >= 0
    assert 0.3 < has.mean() < 0.95
    assert (split[~has & (split == "train")] == "train").all()
    assert not has[split != "train"].any()
    assert (split[partners[has]] == "train").all()
    assert (patient_ids[partners[has]] == patient_ids[has]).all()
    assert (partners[has] != visits[has]).all()
    # A train visit has a partner exactly when its patient has another train visit here.
    train = split == "train"
    n_train = dict(zip(*np.unique(patient_ids[train], return_counts=True), strict=True))
    expected = np.array([train[i] and n_train.get(patient_ids[i], 0) > 1 for i in visits])
    assert (has == expected).all()


def _sampler(n: int, patients: PatientVisits, **kwargs) -> PatientPairSampler:
    lengths = np.random.default_rng(0).integers(5, 60, size=n)
    return PatientPairSampler(LengthBucketSampler(lengths, 4, seed=3, **kwargs), patients)


def test_pair_draws_are_fixed_by_seed_epoch_and_batch_and_survive_a_resume():
    n = 400
    rng = np.random.default_rng(1)
    patients = PatientVisits(rng.integers(0, 150, size=n), rng.random(n) < 0.8)
    first = list(_sampler(n, patients, epoch=2))
    assert first == list(_sampler(n, patients, epoch=2))
    assert first != list(_sampler(n, patients, epoch=3))
    assert list(_sampler(n, patients, epoch=2, start_batch=7)) == first[7:]
    batches = _sampler(n, patients, epoch=2).batches()
    resumed = _sampler(n, patients, epoch=2, start_batch=7).batches()
    assert all(
        (a == c).all() and (b == d).all()
        for (a, b), (c, d) in zip(batches[7:], resumed, strict=True)
    )
    for (visits, partners), triples in zip(batches, first, strict=True):
        assert [t[0] for t in triples] == visits.tolist()
        drawn = np.array([t[1] for t in triples])
        assert (partners == np.where(drawn >= 0, drawn, visits)).all()  # placeholder: itself
    # Rank shares tile each global batch, groups indexed over the global batch.
    shares = [list(_sampler(n, patients, epoch=2, rank=r, world_size=2)) for r in range(2)]
    for i, whole in enumerate(first):
        assert shares[0][i] + shares[1][i] == whole


def test_collated_pairs_carry_partner_views_and_groups(cohort_tokens):
    dataset = TokenDataset(cohort_tokens, pretraining_selection(False), splits=SPLITS)
    patients = PatientVisits.of_dataset(dataset)
    sampler = PatientPairSampler(LengthBucketSampler(dataset.lengths, 32, seed=0), patients)
    triples = next(iter(sampler))
    paired = PairedDataset(dataset)
    batch = collate_pairs([paired[t] for t in triples])
    visits, partner, pairs = split_partner(batch)
    expected_visits = collate([dataset[t[0]] for t in triples])
    expected_partners = collate([dataset[t[1] if t[1] >= 0 else t[0]] for t in triples])
    assert visits.keys() == expected_visits.keys()
    for key, value in expected_visits.items():
        torch.testing.assert_close(visits[key], value, rtol=0, atol=0, equal_nan=True)
    assert partner.keys() == expected_partners.keys() - {"labels"}
    for key, value in partner.items():
        assert torch.equal(value, expected_partners[key]), key
    assert pairs["paired"].tolist() == [t[1] >= 0 for t in triples]
    assert pairs["groups"].tolist() == [t[2] for t in triples]
    assert batch[HAS_PARTNER].dtype == torch.bool and batch[PATIENT_GROUPS].dtype == torch.int64
    assert pairs["paired"].any()
    plain = collate([dataset[0], dataset[1]])
    assert split_partner(plain) == (plain, None, None)


def test_patient_visits_rejects_mismatched_columns():
    with pytest.raises(ValueError, match="differ"):
        PatientVisits(np.zeros(3, dtype=int), np.ones(4, dtype=bool))


@pytest.mark.parametrize("as_string", [False, True])
def test_patient_codes_from_integer_and_string_ids(as_string):
    from types import SimpleNamespace

    import polars as pl

    ids = pl.Series("patient_id", PATIENTS * 7 + 1000)
    ids = ids.cast(pl.String).str.replace(r"^", "PAT-") if as_string else ids
    meta = pl.DataFrame([ids, pl.Series("split", SPLIT)])
    patients = PatientVisits.of_dataset(SimpleNamespace(meta=meta))
    codes = patients.patients
    assert sorted(set(codes.tolist())) == list(range(len(set(PATIENTS.tolist()))))
    assert ((codes[:, None] == codes[None, :]) == (PATIENTS[:, None] == PATIENTS[None, :])).all()
    assert patients.partner_counts(np.arange(len(PATIENTS))).tolist() == [
        2, 1, 2, 0, 0, 0, 0, 0, 1, 2, 0
    ]  # fmt: skip
