"""The built-in synthetic emergency-department cohort: visits, events, labels and the true risk.

`catalog` holds the static tables (conditions, labs, problems, code families); `simulation`
(version 1) and `simulation_v2` (version 2, with `catalog_v2`) draw patients, visits and their
events for a seed; `versions` chooses between them; `writer` writes a cohort as a dataset
directory.
"""

from ehr_ssl.data.synthetic.catalog import (
    CONDITIONS,
    LABS,
    PROBLEMS,
    Condition,
    Lab,
    Problem,
    noise_codes,
)
from ehr_ssl.data.synthetic.simulation import Cohort
from ehr_ssl.data.synthetic.versions import (
    COHORT_VERSIONS,
    DEFAULT_COHORT_VERSION,
    generate_cohort,
)
from ehr_ssl.data.synthetic.writer import write_cohort, write_meds_cohort

__all__ = [
    "COHORT_VERSIONS",
    "DEFAULT_COHORT_VERSION",
    "CONDITIONS",
    "LABS",
    "PROBLEMS",
    "Cohort",
    "Condition",
    "Lab",
    "Problem",
    "generate_cohort",
    "noise_codes",
    "write_cohort",
    "write_meds_cohort",
]
