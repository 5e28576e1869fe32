"""Command-line options derived from the settings: each flag takes its type, choices, help text
and default from the dataclass field it sets (`ehr_ssl.config`), and `--set section.key=value`
reaches every other setting.

A setting flag stores its value under the dest "setting:<section.key>" and defaults to None
(unset), so a flag given wins over the TOML file and an absent one keeps the file's value.
"""

from __future__ import annotations

import argparse
import os
import typing
from pathlib import Path
from typing import Any

from ehr_ssl.config import PRESETS, PipelineConfig, parse_budget
from ehr_ssl.errors import InputError
from ehr_ssl.settings import field_default, field_docs, parse_assignment, setting_field

SETTING = "setting:"  # dest prefix of the flags that set a setting


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2), like every other bad input."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def is_main_process() -> bool:
    """False in torchrun's processes other than rank 0, which speaks for the run."""
    return os.environ.get("RANK", "0") == "0"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {value}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _budget(text: str) -> int | float | None:
    try:
        return parse_budget(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(e.problem) from None


def _list_of(item: type) -> Any:
    def parse(text: str) -> list:
        return [item(part.strip()) for part in text.split(",") if part.strip()]

    parse.__name__ = f"comma-separated {item.__name__}"  # argparse names it in its errors
    return parse


def _argument_type(hint: Any) -> dict[str, Any]:
    """argparse keywords that read a value of type `hint` from the command line."""
    if hint is bool:
        return {"action": "store_true"}
    options = [o for o in typing.get_args(hint) if o is not type(None)]
    if len(options) == 1 and typing.get_origin(options[0]) is list:  # list[str] | None
        hint, options = options[0], list(typing.get_args(options[0]))
    if typing.get_origin(hint) is list:
        return {"type": _list_of(options[0])}
    if len(options) > 1:  # int | float | None: a label budget ("all" is None)
        return {"type": _budget}
    return {"type": options[0] if options else hint}


def _shown(dotted: str, value: Any, unset: str | None = None) -> str:
    """A setting's value as the command line writes it (`unset`: what None means)."""
    if value is None and unset:
        return unset
    if value is None:
        return "all" if dotted.endswith("label_budget") else "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _default_text(dotted: str, default: Any, unset: str | None = None) -> str:
    """[default], naming the presets' values where they set this setting."""
    section, _, key = dotted.rpartition(".")
    by_preset = {name: p.get(section, {}).get(key) for name, p in PRESETS.items()}
    by_preset = {name: value for name, value in by_preset.items() if value is not None}
    if by_preset:
        presets = ", ".join(f"{name} {value}" for name, value in by_preset.items())
        return f"[preset: {presets}; else {_shown(dotted, default, unset)}]"
    return f"[{_shown(dotted, default, unset)}]"


def add_setting(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    dotted: str,
    *,
    flag: str | None = None,
    root: type = PipelineConfig,
) -> None:
    """A flag for the setting "section.key" of `root` (default flag: --key, dashed)."""
    cls, field, hint = setting_field(root, dotted)
    flag = flag or "--" + field.name.replace("_", "-")
    doc = field_docs(cls).get(field.name, "").replace("`", "")
    help_text = (
        f"{doc} {_default_text(dotted, field_default(field), field.metadata.get('unset'))}".strip()
    )
    kwargs = _argument_type(hint)
    if "choices" in field.metadata:
        kwargs["choices"] = field.metadata["choices"]
    elif "type" in kwargs:
        kwargs["metavar"] = field.name.upper()
    parser.add_argument(
        flag, dest=SETTING + dotted, default=None, help=help_text.replace("%", "%%"), **kwargs
    )


def add_config_options(
    parser: argparse.ArgumentParser,
    what: str,
    examples: str = "train.learning_rate=3e-4 or model.hidden_size=128",
) -> None:
    """--config FILE and --set section.key=value, the two ways to reach every setting."""
    parser.add_argument("--config", type=Path, help=f"TOML file with {what}; flags given win")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"set any setting of the TOML file, e.g. {examples} (a TOML value; repeat for "
        "several); wins over the file",
    )


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """ "section.key" -> value from --set, then from the setting flags given (None = unset)."""
    values = dict(parse_assignment(text) for text in getattr(args, "assignments", []))
    for dest, value in vars(args).items():
        if dest.startswith(SETTING) and value is not None:
            values[dest.removeprefix(SETTING)] = value
    return values


# Where a MEDS root's ED visits are (`config.MedsConfig`): flags named --meds-*, on every command
# that reads a dataset, so that they say which data they are for.
MEDS_SETTINGS = ("meds.labels", "meds.prediction_times", "meds.arrival_code")


def add_meds_settings(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    for dotted in MEDS_SETTINGS:
        add_setting(parser, dotted, flag="--" + dotted.replace(".", "-").replace("_", "-"))


def add_cohort_version(parser: argparse.ArgumentParser) -> None:
    """`--cohort-version`: which generative story the synthetic cohort is drawn from."""
    from ehr_ssl.data.synthetic.versions import COHORT_VERSIONS, DEFAULT_COHORT_VERSION

    parser.add_argument(
        "--cohort-version",
        type=int,
        choices=COHORT_VERSIONS,
        default=DEFAULT_COHORT_VERSION,
        help=f"synthetic cohort version: 2 calibrated to real ED data (docs/cohort.md), 1 the "
        f"cohort of the figures recorded before it [{DEFAULT_COHORT_VERSION}]",
    )
