import pytest
from django.core.exceptions import ImproperlyConfigured

from clinic_crm.env import env_bool
from tests.clinic_crm.test_settings import manage, production_env


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", " yes ", "On"])
def test_yes_words_are_true(monkeypatch, raw):
    monkeypatch.setenv("CRM_TEST_FLAG", raw)

    assert env_bool("CRM_TEST_FLAG", False) is True


@pytest.mark.parametrize("raw", ["0", "false", "False", " no ", "OFF"])
def test_no_words_are_false(monkeypatch, raw):
    monkeypatch.setenv("CRM_TEST_FLAG", raw)

    assert env_bool("CRM_TEST_FLAG", True) is False


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_unset_or_empty_is_the_default(monkeypatch, raw):
    monkeypatch.delenv("CRM_TEST_FLAG", raising=False)
    if raw is not None:
        monkeypatch.setenv("CRM_TEST_FLAG", raw)

    assert env_bool("CRM_TEST_FLAG", True) is True
    assert env_bool("CRM_TEST_FLAG", False) is False


@pytest.mark.parametrize("raw", ["ture", "2", "y", "enabled", "-1"])
def test_an_unknown_value_is_an_error_naming_the_variable_not_false(monkeypatch, raw):
    monkeypatch.setenv("CRM_TEST_FLAG", raw)

    with pytest.raises(ImproperlyConfigured, match=r"CRM_TEST_FLAG='.+' is not a yes/no value"):
        env_bool("CRM_TEST_FLAG", True)


def test_a_mistyped_boolean_setting_stops_the_app_naming_it():
    # given: SECURE_SSL_REDIRECT=ture used to mean "off", silently
    env = production_env(SECURE_SSL_REDIRECT="ture")

    # when
    result = manage("check", env=env)

    # then
    assert result.returncode != 0
    assert "SECURE_SSL_REDIRECT='ture' is not a yes/no value" in result.stderr
