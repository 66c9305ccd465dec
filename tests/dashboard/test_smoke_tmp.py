import pytest
from django.urls import reverse

@pytest.mark.django_db
def test_smoke(client, manager_user):
    client.force_login(manager_user)
    r = client.get(reverse("dashboard:index"))
    assert r.status_code == 200, r.content[:3000]
    for t in ["funnel","effect","weekly","delivery","opt_out","cost"]:
        for fmt in ["csv","xlsx"]:
            r = client.get(reverse("dashboard:export", args=[t, fmt]))
            assert r.status_code == 200
