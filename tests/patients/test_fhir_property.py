"""Whatever is wrong with a bundle, import_fhir either imports it whole or refuses it whole."""

import json

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent.models import ConsentEntry
from patients.fhir import FhirImportError, bundle_import
from patients.models import Appointment, AuditEntry, Patient, Prescription, Procedure, Visit
from tests.patients.test_fhir import NOW, exported_then_discarded

pytestmark = pytest.mark.django_db

TABLES = (Patient, Visit, Prescription, Procedure, Appointment, ConsentEntry, AuditEntry)


def leaves(value, path=()):
    """Every path into the document, leaves and branches alike."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from leaves(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaves(child, (*path, index))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "2026-02-30",
            "2026-01-05T10:00:00",
            "2026-01-05T10:00:00+08:00",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31",
            "urn:uuid:00000000-0000-4000-8000-000000000000",
            "Patient",
            "x" * 300,
            "booked",
            "deny",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=5,
)


@pytest.fixture(scope="module")
def base_bundle(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), time_machine.travel(NOW, tick=False):
        return exported_then_discarded()


def counts():
    return [table.objects.count() for table in TABLES]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_damaged_bundle_is_imported_whole_or_refused_whole(base_bundle, data):
    # given: the bundle with one to three elements replaced or removed
    document = json.loads(base_bundle)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in leaves(document) if p]
        path = data.draw(st.sampled_from(paths))
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON_VALUES)
    before = counts()

    # when
    try:
        with time_machine.travel(NOW, tick=False):
            bundle_import(json.dumps(document), now=NOW)
    except FhirImportError as refused:
        # then: refused with reasons, and nothing written
        assert refused.problems
        assert counts() == before
