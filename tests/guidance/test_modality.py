"""The one list of modalities (:class:`guidance.records.Modality`) and what derives from it."""

from __future__ import annotations

import pytest

from guidance.records import MODALITIES, Modality


def test_names_are_the_config_and_cli_spelling() -> None:
    assert MODALITIES == ("us", "fluoro", "ct")


def test_a_modality_equals_its_name() -> None:
    assert Modality.FLUORO == "fluoro"


def test_str_is_the_name() -> None:
    assert f"{Modality.CT}" == "ct"


@pytest.mark.parametrize(("term", "expected"), [
    ("US", Modality.US), ("ct", Modality.CT), (" XA ", Modality.FLUORO), ("RF", Modality.FLUORO),
    ("DX", Modality.FLUORO), ("fluoroscopy", Modality.FLUORO),
])
def test_dicom_terms(term: str, expected: Modality) -> None:
    assert Modality.from_dicom_term(term) is expected


@pytest.mark.parametrize("term", ["MR", "", "OT", "usx"])
def test_unknown_terms_are_none(term: str) -> None:
    assert Modality.from_dicom_term(term) is None


def test_sent_terms_read_back() -> None:
    for m in Modality:
        assert Modality.from_dicom_term(m.dicom_term) is m


def test_every_derived_list_is_the_one_list() -> None:
    from guidance.pipeline import config
    from guidance.training import realimages
    from models import card, shipped

    derived = (config.MODALITIES, realimages.MODALITIES, card.MODALITIES,
               shipped.SHIPPED_MODALITIES)
    assert all(d is MODALITIES for d in derived)
