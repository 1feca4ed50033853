"""``open_case``: a real case or the phantom, as ``metareg demo``, ``metareg benchmark`` and the web app open one."""

from __future__ import annotations

import numpy as np
import pytest

from MetaRegistrationLib import phantom
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.phantom import open_case, open_case_with_truth


def test_without_a_folder_it_is_the_phantom(monkeypatch):
    small = phantom.make_phantom_case(seed=0, scale=0.3)
    monkeypatch.setattr(phantom, "make_phantom_case", lambda seed: small)
    case, truth = open_case_with_truth()
    assert case.case_id == "phantom-0" and truth is small[1]
    assert open_case() is small[0]


def test_a_folder_gives_its_first_case_or_the_one_asked_for(synthetic_dataset):
    assert open_case(synthetic_dataset).case_id == "a"
    case, truth = open_case_with_truth(synthetic_dataset, "b")
    assert case.case_id == "b" and truth is None
    assert np.allclose(case.moving_image.grid.origin, (-4.5, 3.0, 0.0))


@pytest.mark.parametrize(
    "folder, case_id, message",
    [
        (None, "a", "case 'a': a case ID needs the data folder"),
        ("data", "zzz", "has no complete case zzz"),
        ("nowhere", None, "data folder not found"),
    ],
)
def test_bad_requests_are_one_line_errors(synthetic_dataset, folder, case_id, message):
    root = {None: None, "data": synthetic_dataset, "nowhere": synthetic_dataset / "nowhere"}[folder]
    with pytest.raises(InputError, match=message) as caught:
        open_case(root, case_id)
    assert "\n" not in str(caught.value)


def test_a_data_set_without_cases_is_refused(synthetic_dataset):
    for path in (synthetic_dataset / "moving_labels").iterdir():
        path.unlink()
    with pytest.raises(InputError, match="no cases selected"):
        open_case(synthetic_dataset)
