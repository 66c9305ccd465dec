import pytest


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def clinic(db):
    from patients.models import ClinicProfile

    profile = ClinicProfile.load()
    profile.name = "安心診所"
    profile.phone = "02-2345-6789"
    profile.save()
    return profile


@pytest.fixture
def front_desk_user(db):
    return _staff("desk", "Front desk")


@pytest.fixture
def manager_user(db):
    return _staff("manager", "Clinic manager")


def _staff(username, group_name):
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(username, password="correct horse 42", is_staff=True)
    user.groups.add(Group.objects.get(name=group_name))
    return user
