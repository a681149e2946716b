"""params.yaml validation: typos, nonsense values and bad YAML fail early and clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from greenr.errors import GreenrError
from greenr.params import SECTIONS, Section, load_section, validate_all

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def test_the_committed_params_file_is_valid():
    sections = validate_all(REPO_PARAMS)
    assert set(sections) == set(SECTIONS)
    assert sections["train"].epochs >= 1


def test_missing_sections_take_the_defaults(tmp_path: Path):
    train = load_section("train", write(tmp_path, {}))
    assert train == SECTIONS["train"]()


def test_the_defaults_in_code_are_the_committed_params():
    """Deleting a key from params.yaml must not silently switch the recipe: every default in
    greenr/params.py equals the committed value, and every field is written in params.yaml."""
    committed = yaml.safe_load(REPO_PARAMS.read_text())
    for name, section in SECTIONS.items():
        written = committed.get(name) or {}
        assert section.model_validate(written) == section(), name

        def keys(model: type, raw: dict, prefix: str) -> list[str]:
            missing = []
            for field, info in model.model_fields.items():
                if field not in raw:
                    missing.append(prefix + field)
                elif isinstance(info.annotation, type) and issubclass(info.annotation, Section):
                    missing += keys(info.annotation, raw[field] or {}, f"{prefix}{field}.")
            return missing

        assert keys(section, written, f"{name}.") == [], f"params.yaml does not write these {name} keys"


def test_unknown_key_gets_a_did_you_mean(tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        load_section("train", write(tmp_path, {"train": {"epochz": 3}}))
    assert "train.epochz: unknown key (did you mean 'epochs'?)" in err.value.what


def test_unknown_nested_key_gets_a_did_you_mean(tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        load_section("train", write(tmp_path, {"train": {"augment": {"hflp": True}}}))
    assert "train.augment.hflp: unknown key (did you mean 'hflip'?)" in err.value.what


def test_zero_epochs_is_rejected(tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        load_section("train", write(tmp_path, {"train": {"epochs": 0}}))
    assert "train.epochs" in err.value.what and "(got 0)" in err.value.what


def test_split_fractions_must_sum_to_one(tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        load_section("split", write(tmp_path, {"split": {"train": 0.8, "val": 0.15, "test": 0.15}}))
    assert "must sum to 1" in err.value.what and "1.1" in err.value.what


def test_wrong_type_and_literal_are_rejected(tmp_path: Path):
    with pytest.raises(GreenrError, match="train.optimizer"):
        load_section("train", write(tmp_path, {"train": {"optimizer": "adamm"}}))
    with pytest.raises(GreenrError, match="train.lr"):
        load_section("train", write(tmp_path, {"train": {"lr": "fast"}}))


def test_unknown_top_level_section_gets_a_did_you_mean(tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        validate_all(write(tmp_path, {"trian": {"epochs": 2}}))
    assert "unknown section 'trian' (did you mean 'train'?)" in err.value.what


def test_bad_yaml_is_a_clear_error(tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        load_section("train", write(tmp_path, "train:\n  epochs: [1, 2\n"))
    assert "not valid YAML" in err.value.what


def test_a_section_that_is_not_a_mapping_is_rejected(tmp_path: Path):
    with pytest.raises(GreenrError, match="'train' must be a mapping"):
        load_section("train", write(tmp_path, {"train": [1, 2]}))
    with pytest.raises(GreenrError, match="must be a mapping of sections"):
        load_section("train", write(tmp_path, "- 1\n- 2\n"))
