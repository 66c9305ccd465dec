"""A rule's holdout: a stable share of patients, chosen by a hash of patient and rule computed
the same in SQL (planner, dashboard) and in Python (gate), gets nothing from the rule."""

import datetime as dt
import random

import pytest
import time_machine
from django.db import transaction
from django.urls import reverse
from django.utils import translation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.models import Rule, Skip, SkipReason
from campaigns.policy import (
    Action,
    held_out_q,
    holdout_bucket,
    holdout_bucket_expression,
    is_held_out,
    send_decision,
)
from campaigns.preview import patient_plan
from consent.models import Channel, Purpose
from patients.models import ClinicProfile, Patient
from reminders.models import OutboxMessage
from tests.factories import PatientFactory, grant
from tests.helpers import only, plan, taipei

pytestmark = pytest.mark.django_db
BORN = dt.date(1960, 11, 24)
BIRTHDAY = taipei(2026, 11, 24, 8, 0)

# Ids at the edges of the arithmetic: around the prime 2**31 - 1, past 2**32, 2**53 (where a
# float would round) and near the top of a bigint.
EDGE_IDS = [1, 2, 3, 99, 2**31 - 2, 2**31 - 1, 2**31, 2**32 + 5, 2**53 + 1, 2**62 + 17, 2**63 - 1]


def _patients_with_ids(ids: list[int]) -> None:
    Patient.objects.bulk_create(
        [Patient(id=pid, chart_no=f"H{n:07d}", name=f"測試{n}") for n, pid in enumerate(ids)]
    )


def test_sql_and_python_give_every_patient_the_same_bucket():
    # given patients with ordinary and extreme ids
    ids = EDGE_IDS + random.Random(7).sample(range(4, 10**9), 300)
    _patients_with_ids(ids)

    for rule_id in (1, 2, 97, 10**6):
        # when the database computes the bucket
        in_sql = dict(
            Patient.objects.annotate(
                bucket=holdout_bucket_expression(patient_ref="id", rule_id=rule_id)
            ).values_list("id", "bucket")
        )
        # then it is Python's, exactly (no float rounding, no overflow)
        assert in_sql == {pid: holdout_bucket(pid, rule_id) for pid in ids}
        assert in_sql == dict(
            Patient.objects.annotate(
                bucket=holdout_bucket_expression(patient_ref="id", rule_id=rule_id)
            ).values_list("id", "bucket")
        )


def test_held_out_q_filters_the_same_patients_as_the_gate_would():
    _patients_with_ids(list(range(1, 2001)))
    rule = Rule.objects.order_by("pk").first()
    rule.holdout_percent = 20
    rule.save()

    held = set(
        Patient.objects.filter(held_out_q(rule, patient_ref="id")).values_list("id", flat=True)
    )
    others = set(
        Patient.objects.filter(~held_out_q(rule, patient_ref="id")).values_list("id", flat=True)
    )

    assert held == {pid for pid in range(1, 2001) if is_held_out(rule, pid)}
    assert held.isdisjoint(others) and len(held | others) == 2000
    # about a fifth of 2,000 (a binomial's standard deviation is ~18)
    assert 330 <= len(held) <= 470


def test_held_out_q_works_through_a_relation():
    patient = PatientFactory()
    rule = only("生日祝福")
    rule.holdout_percent = 50
    rule.save()
    OutboxMessage.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key="x",
        purpose=Purpose.RELATIONSHIP,
        channel="sms",
        due_at=BIRTHDAY,
        next_attempt_at=BIRTHDAY,
        expires_at=BIRTHDAY,
        body="x",
    )

    held = OutboxMessage.objects.filter(held_out_q(rule, patient_ref="patient_id")).exists()

    assert held == is_held_out(rule, patient.pk)


def test_a_share_of_zero_holds_out_nobody():
    _patients_with_ids(list(range(1, 501)))
    rule = Rule.objects.order_by("pk").first()
    rule.holdout_percent = 0

    assert not Patient.objects.filter(held_out_q(rule, patient_ref="id")).exists()
    assert not any(is_held_out(rule, pid) for pid in range(1, 501))


@pytest.mark.parametrize("percent", [1, 5, 10, 25, 50])
def test_the_share_held_out_is_close_to_the_percent(percent):
    ids = range(1, 2001)
    for rule_id in (1, 2, 3, 50):
        held = sum(holdout_bucket(pid, rule_id) < percent for pid in ids)
        expected = 2000 * percent / 100
        spread = 4 * (expected * (1 - percent / 100)) ** 0.5  # four standard deviations
        assert abs(held - expected) <= spread + 1, (rule_id, held)


def test_rules_hold_out_different_patients():
    ids = range(1, 2001)
    one = {pid for pid in ids if holdout_bucket(pid, 1) < 50}
    two = {pid for pid in ids if holdout_bucket(pid, 2) < 50}
    # independent halves overlap on about a quarter
    assert 400 <= len(one & two) <= 600


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(percent=st.integers(0, 50), patients=st.integers(1, 8))
def test_held_out_patients_never_get_a_message_from_the_rule(clinic, percent, patients):
    with transaction.atomic():
        # given consenting patients with a birthday today and a rule holding out `percent` %
        rule = only("生日祝福")
        rule.holdout_percent = percent
        rule.save()
        people = [PatientFactory(birth_date=BORN) for _ in range(patients)]
        for person in people:
            grant(person, Purpose.RELATIONSHIP, Channel.SMS)

        # when the planner runs
        plan(BIRTHDAY)

        # then the held-out ones have a holdout skip and no message; the others a message
        for person in people:
            messaged = OutboxMessage.objects.filter(rule=rule, patient=person).exists()
            if is_held_out(rule, person.pk):
                assert percent > 0
                assert not messaged
                assert Skip.objects.get(rule=rule, patient=person).reason == SkipReason.HOLDOUT
            else:
                assert messaged
        transaction.set_rollback(True)


def _held_out_and_not(rule: Rule) -> tuple[Patient, Patient]:
    held = kept = None
    while held is None or kept is None:
        patient = PatientFactory(birth_date=BORN)
        if is_held_out(rule, patient.pk):
            held = held or patient
        else:
            kept = kept or patient
    return held, kept


def test_the_gate_drops_a_queued_message_whose_patient_is_now_held_out(clinic):
    # given a message queued before the manager set a holdout share
    rule = only("生日祝福")
    rule.holdout_percent = 50
    rule.save()
    held, kept = _held_out_and_not(rule)
    for patient in (held, kept):
        grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    rule.holdout_percent = 0
    rule.save()
    plan(BIRTHDAY)
    assert OutboxMessage.objects.filter(patient=held).exists()
    rule.holdout_percent = 50
    rule.save()

    # when the gate looks at each at send time
    verdicts = {
        message.patient_id: send_decision(
            message=message, now=taipei(2026, 11, 24, 10, 0), profile=ClinicProfile.load()
        )
        for message in OutboxMessage.objects.select_related("patient", "rule")
    }

    # then the held-out one is dropped with the planner's reason, the other goes
    assert verdicts[held.pk].action == Action.DROP
    assert verdicts[held.pk].code == SkipReason.HOLDOUT
    assert verdicts[kept.pk].action == Action.SEND


def test_the_patient_page_shows_a_held_out_patient_as_in_the_comparison_group(clinic):
    rule = only("生日祝福")
    rule.holdout_percent = 50
    rule.save()
    held, kept = _held_out_and_not(rule)
    for patient in (held, kept):
        grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    held_rows = patient_plan(patient=held, now=taipei(2026, 11, 24, 0, 5))
    kept_rows = patient_plan(patient=kept, now=taipei(2026, 11, 24, 0, 5))

    assert [row.skip for row in held_rows] == [SkipReason.HOLDOUT]
    with translation.override("zh-hant"):
        assert "列入對照組" in held_rows[0].reason_label
    assert [(row.skip, row.channel) for row in kept_rows] == [(None, "sms")]


# --- when a rule was switched on ------------------------------------------------------------


@pytest.fixture
def manager(client, manager_user):
    client.force_login(manager_user)
    return client


def _list_post(rules: list[Rule], enabled: set[int]) -> dict:
    data = {
        "form-TOTAL_FORMS": str(len(rules)),
        "form-INITIAL_FORMS": str(len(rules)),
        "_save": "Save",
    }
    for index, each in enumerate(rules):
        data[f"form-{index}-id"] = str(each.pk)
        if each.pk in enabled:
            data[f"form-{index}-enabled"] = "on"
    return data


def test_switching_a_rule_on_in_the_list_notes_when_and_keeping_it_on_does_not(manager):
    # given one rule off and the others on since a known time
    rules = list(Rule.objects.all())
    earlier = taipei(2026, 1, 1, 9, 0)
    Rule.objects.update(enabled=True, enabled_since=earlier)
    birthday = Rule.objects.get(name__startswith="生日祝福")
    Rule.objects.filter(pk=birthday.pk).update(enabled=False)
    every = {rule.pk for rule in rules}

    # when the manager ticks it on from the list
    with time_machine.travel(taipei(2026, 12, 3, 9, 0), tick=False):
        response = manager.post(
            reverse("admin:campaigns_rule_changelist"), _list_post(rules, every)
        )

    # then it was switched on now, and the others keep their time
    assert response.status_code == 302
    birthday.refresh_from_db()
    assert birthday.enabled and birthday.enabled_since == taipei(2026, 12, 3, 9, 0)
    assert set(Rule.objects.exclude(pk=birthday.pk).values_list("enabled_since", flat=True)) == {
        earlier
    }


def test_a_rule_saved_while_on_keeps_its_switch_on_time_and_a_new_one_gets_one(manager):
    from tests.campaigns.test_admin import change_post, new_rule_post

    rule = Rule.objects.get(name__startswith="生日祝福")
    earlier = taipei(2026, 1, 1, 9, 0)
    Rule.objects.filter(pk=rule.pk).update(enabled=True, enabled_since=earlier)
    rule.refresh_from_db()

    with time_machine.travel(taipei(2026, 12, 3, 9, 0), tick=False):
        changed = manager.post(
            reverse("admin:campaigns_rule_change", args=[rule.pk]),
            change_post(rule, priority="7", holdout_percent="10"),
        )
        added = manager.post(reverse("admin:campaigns_rule_add"), new_rule_post())

    assert changed.status_code == 302 and added.status_code == 302
    rule.refresh_from_db()
    assert (rule.priority, rule.holdout_percent, rule.enabled_since) == (7, 10, earlier)
    new = Rule.objects.get(name="Test reminder")
    assert new.enabled_since == taipei(2026, 12, 3, 9, 0) and new.holdout_percent == 0


def test_a_holdout_over_half_is_refused(manager):
    from tests.campaigns.test_admin import change_post

    rule = Rule.objects.get(name__startswith="生日祝福")

    response = manager.post(
        reverse("admin:campaigns_rule_change", args=[rule.pk]),
        change_post(rule, holdout_percent="60"),
    )

    assert response.status_code == 200
    assert "holdout_percent" in response.context["adminform"].form.errors
    rule.refresh_from_db()
    assert rule.holdout_percent == 0


def test_the_rule_page_shows_the_holdout_share_with_its_help_and_the_switch_on_time(manager):
    rule = Rule.objects.get(name__startswith="生日祝福")
    Rule.objects.filter(pk=rule.pk).update(enabled_since=taipei(2026, 1, 2, 9, 30))

    with translation.override("zh-hant"):
        page = manager.get(
            reverse("admin:campaigns_rule_change", args=[rule.pk]), HTTP_ACCEPT_LANGUAGE="zh-hant"
        ).content.decode()

    assert 'name="holdout_percent"' in page
    assert "對照組比例" in page
    assert 'name="enabled_since"' not in page  # shown, not editable
    assert "2026" in page.split("啟用時間", 1)[1][:400]


def test_the_backfill_gives_rules_already_on_the_time_of_their_first_message(clinic):
    from importlib import import_module

    from django.apps import apps

    backfill = import_module("campaigns.migrations.0007_enabled_since_backfill").backfill
    with_messages, without, off = Rule.objects.order_by("pk")[:3]
    Rule.objects.update(enabled_since=None, enabled=True)
    Rule.objects.filter(pk=off.pk).update(enabled=False)
    patient = PatientFactory()
    for day in (5, 3):
        message = OutboxMessage.objects.create(
            rule=with_messages,
            patient=patient,
            occurrence_key=f"m{day}",
            purpose=Purpose.CARE,
            channel="sms",
            due_at=BIRTHDAY,
            next_attempt_at=BIRTHDAY,
            expires_at=BIRTHDAY,
            body="x",
        )
        OutboxMessage.objects.filter(pk=message.pk).update(created_at=taipei(2026, 5, day, 9, 0))

    with time_machine.travel(taipei(2026, 12, 3, 9, 0), tick=False):
        backfill(apps, None)

    since = dict(Rule.objects.values_list("pk", "enabled_since"))
    assert since[with_messages.pk] == taipei(2026, 5, 3, 9, 0)
    assert since[without.pk] == taipei(2026, 12, 3, 9, 0)
    assert since[off.pk] is None
