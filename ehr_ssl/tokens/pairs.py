"""Patient-level contrastive pairs (`objective.contrastive_views = "patient"`, issue 19): a visit's
partner is another train-split visit of the same patient, drawn at random per batch.

Only train-split patients have partners: a val or test patient's visit (pretraining may read
them, and with train.include_test_unlabeled the test patients' unlabeled visits) has none, nor
has a train visit whose patient has no other selected train visit. The partners of a batch are a
pure function of (seed, epoch, batch number), like the batch order itself, so a resumed run
draws the same ones. Patients are dense codes in memory; no patient id leaves this module.

A partner may be a later visit of the patient, as in CLOCS's patient-level positives across
time: partners are drawn from train patients' visits only, each read through its own window, so
no val or test visit, and no visit a model is scored on, ever reads an event after its
prediction time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl
import torch

from ehr_ssl.tokens.batching import LengthBucketSampler, TokenDataset, collate

PARTNER = "partner_"  # prefix of the partner view's (B, T_p) tensors in a collated batch
PATIENT_GROUPS = "patient_groups"  # (B,) int64: dense patient index within the global batch
HAS_PARTNER = "has_partner"  # (B,) bool: whether row i's partner view is a real partner
_STREAM = 0x9A17  # keeps the partner draws apart from the batch order's (seed, epoch) stream


class PatientVisits:
    """The visits of a dataset grouped by patient, for drawing partners (numpy only).

    The train-split visits are sorted by patient (CSR-like): patient p's are
    `members[starts[p] : starts[p + 1]]`; a visit's place in its run is `position` (-1 for
    visits outside the train split). Three int64 arrays of at most one entry per visit, built
    once (8M visits: about 2 s and 200 MB).
    """

    def __init__(self, patients: np.ndarray, in_train: np.ndarray):
        """`patients`: each visit's patient as a dense code in [0, P); `in_train`: whether the
        visit belongs to the train split. Shape: (n,), (n,) bool."""
        patients = np.asarray(patients, dtype=np.int64)
        in_train = np.asarray(in_train, dtype=bool)
        if patients.shape != in_train.shape or patients.ndim != 1:
            raise ValueError(f"patients {patients.shape} and in_train {in_train.shape} differ")
        self.patients = patients
        train = np.flatnonzero(in_train)
        self.members = train[np.argsort(patients[train], kind="stable")]  # (n_train,)
        n_patients = int(patients.max()) + 1 if len(patients) else 0
        counts = np.bincount(patients[self.members], minlength=n_patients)
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # (P + 1,)
        self.position = np.full(len(patients), -1, dtype=np.int64)
        run_start = self.starts[patients[self.members]]
        self.position[self.members] = np.arange(len(self.members)) - run_start

    @classmethod
    def of_dataset(cls, dataset: TokenDataset) -> PatientVisits:
        """From a dataset's per-visit `patient_id` and `split` columns."""
        patient = pl.col("patient_id")
        if dataset.meta.schema["patient_id"] == pl.String:
            # Hashed to integers first: a dense rank of 8M strings sorts them (14 s, not 3 s).
            patient = patient.cast(pl.Categorical).to_physical()
        codes = dataset.meta.select(patient.rank("dense").cast(pl.Int64) - 1)
        in_train = (dataset.meta["split"] == "train").to_numpy()
        return cls(codes.to_series().to_numpy(), in_train)

    def partner_counts(self, visits: np.ndarray) -> np.ndarray:
        """How many partners each visit can draw from (0: none). Shape: (B,) -> (B,)."""
        patients = self.patients[visits]
        others = self.starts[patients + 1] - self.starts[patients] - 1
        return np.where(self.position[visits] >= 0, others, 0)

    def draw_partners(self, visits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A partner per visit, uniform among its patient's other train visits; -1 where none.

        One uniform number per visit whatever the outcome, so the draw is fixed by the rng.
        Shape: (B,) dataset indices -> (B,) dataset indices.
        """
        visits = np.asarray(visits, dtype=np.int64)
        uniform = rng.random(len(visits))
        others = self.partner_counts(visits)
        pick = np.minimum((uniform * others).astype(np.int64), np.maximum(others - 1, 0))
        position = self.position[visits]
        pick += pick >= position  # skip the visit itself
        start = self.starts[self.patients[visits]]
        found = others > 0
        partners = np.full(len(visits), -1, dtype=np.int64)
        partners[found] = self.members[(start + pick)[found]]
        return partners

    def groups(self, visits: np.ndarray) -> np.ndarray:
        """Each visit's patient as a dense index within `visits` (equal index = same patient).
        Shape: (B,) -> (B,) int64 in [0, B)."""
        return np.unique(self.patients[visits], return_inverse=True)[1].astype(np.int64)


class PatientPairSampler(torch.utils.data.Sampler):
    """The batches of a LengthBucketSampler, each visit with its partner and patient group.

    Yields this process's share of each global batch as (visit, partner, group) triples; the
    partner is the visit itself where it has none (a placeholder the loss leaves out), and the
    group is the patient's dense index within the *global* batch, so every process agrees.
    """

    def __init__(self, batches: LengthBucketSampler, patients: PatientVisits):
        self.sampler, self.patients = batches, patients

    def batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The rest of the epoch from `start_batch`: per global batch, (visits, partners) of
        dataset indices, the partner being the visit itself where it has none."""
        s = self.sampler
        out = []
        for number, visits in enumerate(s.batches()[s.start_batch :], start=s.start_batch):
            partners = self._partners(visits, number)
            out.append((visits, np.where(partners >= 0, partners, visits)))
        return out

    def _partners(self, visits: np.ndarray, number: int) -> np.ndarray:
        rng = np.random.default_rng([self.sampler.seed, self.sampler.epoch, number, _STREAM])
        return self.patients.draw_partners(visits, rng)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        s = self.sampler
        for number, visits in enumerate(s.batches()[s.start_batch :], start=s.start_batch):
            partners = self._partners(visits, number)  # -1 where none
            groups = self.patients.groups(visits)
            triples = np.stack([visits, partners, groups], axis=1)  # (B, 3)
            # (B, 3) -> (W, B/W, 3): row r is rank r's share.
            yield [tuple(t) for t in triples.reshape(s.world_size, -1, 3)[s.rank].tolist()]


class PairedDataset(torch.utils.data.Dataset):
    """Items of a TokenDataset with their partner visit, read by (visit, partner, group)."""

    def __init__(self, dataset: TokenDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, triple: tuple[int, int, int]) -> dict:
        visit, partner, group = triple
        item = self.dataset[visit]
        partner_item = self.dataset[partner if partner >= 0 else visit]
        return {"visit": item, "partner": partner_item, "group": group, "paired": partner >= 0}


def collate_pairs(items: list[dict], pad_to_multiple_of: int = 1) -> dict:
    """`collate` of the visits, plus the partner views under PARTNER-prefixed keys (padded to
    their own longest), PATIENT_GROUPS and HAS_PARTNER.

    Shape: visits (B, T), partner_* (B, T_p), patient_groups (B,), has_partner (B,).
    """
    batch = collate([item["visit"] for item in items], pad_to_multiple_of)
    partners = collate([item["partner"] for item in items], pad_to_multiple_of)
    partners.pop("labels", None)  # the partner's label is never a target
    batch.update({PARTNER + name: value for name, value in partners.items()})
    batch[PATIENT_GROUPS] = torch.tensor([item["group"] for item in items], dtype=torch.int64)
    batch[HAS_PARTNER] = torch.tensor([item["paired"] for item in items], dtype=torch.bool)
    return batch


def split_partner(
    batch: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict | None]:
    """A batch of `collate_pairs` taken apart: (the visits, their partner views, {"groups",
    "paired"}); a plain batch gives (itself, None, None).

    Shape: (B, T) visits, (B, T_p) partner views, groups and paired (B,).
    """
    if PATIENT_GROUPS not in batch:
        return batch, None, None
    visits = {k: v for k, v in batch.items() if not k.startswith(PARTNER)}
    pairs = {"groups": visits.pop(PATIENT_GROUPS), "paired": visits.pop(HAS_PARTNER)}
    partner = {k[len(PARTNER) :]: v for k, v in batch.items() if k.startswith(PARTNER)}
    return visits, partner, pairs
